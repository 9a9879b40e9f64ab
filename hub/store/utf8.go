package store

import (
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/dmctl/dmctl/internal/iothub"
)

// CheckJSONText refuses JSON text that does not encode Unicode text: bytes
// that are not UTF-8, and \u escapes of UTF-16 surrogates that do not form
// a pair. encoding/json would decode both as U+FFFD without a word, so the
// hub would store something other than what was sent. The error is a
// *ValidationError with iothub.CodeIotHubFormatError (400006, the code of
// a body that cannot be parsed); IoT Hub documents no behaviour of its own
// for such bodies. Everything else about the syntax is left to the decoder.
func CheckJSONText(b []byte) error {
	for i := 0; i < len(b); {
		if b[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return &ValidationError{Code: iothub.CodeIotHubFormatError,
				Msg: fmt.Sprintf("malformed JSON: byte %d (0x%02x) is not valid UTF-8", i, b[i])}
		}
		i += n
	}
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !inString {
			inString = c == '"'
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+1 >= len(b) || b[i+1] != 'u' {
				i++ // an escaped character; the decoder checks which
				continue
			}
			u, ok := hex4(b[i+2:])
			if !ok {
				continue // malformed; the decoder says so
			}
			switch {
			case u >= 0xdc00 && u <= 0xdfff:
				return loneSurrogate(u, i)
			case u >= 0xd800 && u <= 0xdbff:
				if len(b) < i+12 || b[i+6] != '\\' || b[i+7] != 'u' {
					return loneSurrogate(u, i)
				}
				if lo, ok := hex4(b[i+8:]); !ok || lo < 0xdc00 || lo > 0xdfff {
					return loneSurrogate(u, i)
				}
				i += 11
			default:
				i += 5
			}
		}
	}
	return nil
}

func loneSurrogate(u rune, at int) error {
	return &ValidationError{Code: iothub.CodeIotHubFormatError,
		Msg: fmt.Sprintf(`malformed JSON: the escape \u%04x at byte %d is half of a UTF-16 surrogate pair, which is not valid UTF-8 text`, u, at)}
}

// hex4 reads the four hex digits of a \u escape at the start of b.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[:4]), 16, 16)
	if err != nil {
		return 0, false
	}
	return rune(v), true
}
