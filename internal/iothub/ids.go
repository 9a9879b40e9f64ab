package iothub

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxIDLength is the longest device or module id IoT Hub accepts, in characters.
const MaxIDLength = 128

// idSpecials are the characters besides ASCII letters and digits that IoT
// Hub allows in device and module ids (the Azure CLI's and the SDKs' list).
const idSpecials = "-.+%_#*?!(),:=@$'"

// CheckID checks a device or module id against IoT Hub's rules: 1 to 128
// ASCII letters, digits and - . + % _ # * ? ! ( ) , : = @ $ '. The error
// describes the problem without naming the id, to follow "deviceId %q ";
// a character that is not allowed is named as itself, not as a byte.
func CheckID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("is empty")
	case len(id) > MaxIDLength:
		return fmt.Errorf("is %d characters long, over the limit of %d", len(id), MaxIDLength)
	case !utf8.ValidString(id):
		return fmt.Errorf("is not valid UTF-8")
	}
	for _, c := range id {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if c < utf8.RuneSelf && strings.IndexByte(idSpecials, byte(c)) >= 0 {
			continue
		}
		return fmt.Errorf("contains %q, which is not allowed (use ASCII letters, digits and - . + %% _ # * ? ! ( ) , : = @ $ ')", c)
	}
	return nil
}
