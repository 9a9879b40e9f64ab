package query

import (
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tNumber
	tString
	tPunct
)

// token is one lexical unit of a query. pos is a byte offset into the text.
type token struct {
	kind tokKind
	pos  int
	text string  // source text (identifier, operator, or raw literal)
	str  string  // decoded value of a string literal
	num  float64 // value of a number literal
}

// describe renders the token for error messages.
func (t token) describe() string {
	switch t.kind {
	case tEOF:
		return "end of query"
	case tString:
		return "string " + t.text
	case tNumber:
		return "number " + t.text
	case tIdent:
		if isReserved(t.text) {
			return "keyword " + strings.ToUpper(t.text)
		}
		return strconv.Quote(t.text)
	}
	return strconv.Quote(t.text)
}

// reserved words cannot start a property path or be used as aliases.
var reserved = map[string]bool{
	"select": true, "top": true, "from": true, "where": true, "group": true,
	"by": true, "as": true, "and": true, "or": true, "not": true, "in": true,
	"nin": true, "true": true, "false": true, "null": true, "undefined": true,
	"order": true,
}

func isReserved(s string) bool { return reserved[strings.ToLower(s)] }

func isIdentStart(c byte) bool {
	return c == '_' || c == '$' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdentPart(c byte) bool { return isIdentStart(c) || isDigit(c) }

// identRuneAt returns the length of a non-ASCII letter (or, when part is set,
// letter or digit) starting at src[i], or 0.
func identRuneAt(src string, i int, part bool) int {
	if src[i] < utf8.RuneSelf {
		return 0
	}
	r, n := utf8.DecodeRuneInString(src[i:])
	if unicode.IsLetter(r) || (part && unicode.IsDigit(r)) {
		return n
	}
	return 0
}

// identEnd returns the end offset of the identifier starting at src[start].
func identEnd(src string, start int) int {
	end := start
	for end < len(src) {
		if isIdentPart(src[end]) {
			end++
		} else if n := identRuneAt(src, end, true); n > 0 {
			end += n
		} else {
			break
		}
	}
	return end
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isHex(c byte) bool {
	return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// lexer splits query text into tokens.
type lexer struct {
	src  string
	off  int
	errf func(pos int, format string, args ...any) error
}

func (l *lexer) all() ([]token, error) {
	var toks []token
	for {
		t, err := l.next()
		if err != nil {
			return nil, err
		}
		toks = append(toks, t)
		if t.kind == tEOF {
			return toks, nil
		}
	}
}

func (l *lexer) next() (token, error) {
	src := l.src
	for l.off < len(src) {
		c := src[l.off]
		if c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' {
			l.off++
			continue
		}
		break
	}
	start := l.off
	if start >= len(src) {
		return token{kind: tEOF, pos: start}, nil
	}
	c := src[start]
	switch {
	case isIdentStart(c) || identRuneAt(src, start, false) > 0:
		end := identEnd(src, start)
		l.off = end
		return token{kind: tIdent, pos: start, text: src[start:end]}, nil
	case isDigit(c) || (c == '.' && start+1 < len(src) && isDigit(src[start+1])):
		return l.number()
	case c == '\'' || c == '"':
		return l.str()
	}
	two := ""
	if start+1 < len(src) {
		two = src[start : start+2]
	}
	if two == "[[" && l.afterDot(start) {
		return l.bracketName(start)
	}
	switch two {
	case "!=", "<>", "<=", ">=":
		l.off += 2
		return token{kind: tPunct, pos: start, text: two}, nil
	}
	switch c {
	case '(', ')', '[', ']', ',', '.', '*', '+', '-', '/', '%', '=', '<', '>':
		l.off++
		return token{kind: tPunct, pos: start, text: string(c)}, nil
	}
	r, _ := utf8.DecodeRuneInString(src[start:])
	return token{}, l.errf(start, "unexpected character %q", r)
}

// afterDot reports whether the last non-blank character before start is '.'.
func (l *lexer) afterDot(start int) bool {
	for i := start - 1; i >= 0; i-- {
		switch c := l.src[i]; c {
		case ' ', '\t', '\n', '\r', '\f', '\v':
			continue
		default:
			return c == '.'
		}
	}
	return false
}

// bracketName lexes a property name written [[name]] after a dot (as in
// configurations.[[myconfig]].status): any characters but "]]". It is an
// identifier token whose str is the name.
func (l *lexer) bracketName(start int) (token, error) {
	end := strings.Index(l.src[start+2:], "]]")
	if end < 0 {
		return token{}, l.errf(start, "unterminated [[ name: no closing ]]")
	}
	name := l.src[start+2 : start+2+end]
	if name == "" {
		return token{}, l.errf(start, "empty [[ ]] name")
	}
	l.off = start + 2 + end + 2
	return token{kind: tIdent, pos: start, text: l.src[start:l.off], str: name}, nil
}

func (l *lexer) number() (token, error) {
	src := l.src
	start := l.off
	end := start
	var val float64
	if src[start] == '0' && start+1 < len(src) && (src[start+1] == 'x' || src[start+1] == 'X') {
		end = start + 2
		for end < len(src) && isHex(src[end]) {
			end++
		}
		if end == start+2 {
			return token{}, l.errf(start, "invalid hex number %q", src[start:min(end+1, len(src))])
		}
		u, err := strconv.ParseUint(src[start+2:end], 16, 64)
		if err != nil {
			return token{}, l.errf(start, "hex number %s out of range", src[start:end])
		}
		val = float64(u)
	} else {
		for end < len(src) && isDigit(src[end]) {
			end++
		}
		if end+1 < len(src) && src[end] == '.' && isDigit(src[end+1]) {
			end++
			for end < len(src) && isDigit(src[end]) {
				end++
			}
		}
		if end < len(src) && (src[end] == 'e' || src[end] == 'E') {
			e := end + 1
			if e < len(src) && (src[e] == '+' || src[e] == '-') {
				e++
			}
			if e < len(src) && isDigit(src[e]) {
				for e < len(src) && isDigit(src[e]) {
					e++
				}
				end = e
			}
		}
		f, err := strconv.ParseFloat(src[start:end], 64)
		if err != nil || math.IsInf(f, 0) {
			return token{}, l.errf(start, "number %s out of range", src[start:end])
		}
		val = f
	}
	if end < len(src) && (isIdentPart(src[end]) || identRuneAt(src, end, true) > 0) {
		e := identEnd(src, end)
		return token{}, l.errf(start, "invalid number %q", src[start:e])
	}
	l.off = end
	return token{kind: tNumber, pos: start, text: src[start:end], num: val}, nil
}

func (l *lexer) str() (token, error) {
	src := l.src
	start := l.off
	quote := src[start]
	var b strings.Builder
	i := start + 1
	for {
		if i >= len(src) {
			return token{}, l.errf(start, "unterminated string starting %s", clip(src[start:], 20))
		}
		c := src[i]
		if c == quote {
			i++
			break
		}
		if c != '\\' {
			b.WriteByte(c)
			i++
			continue
		}
		if i+1 >= len(src) {
			return token{}, l.errf(start, "unterminated string starting %s", clip(src[start:], 20))
		}
		e := src[i+1]
		switch e {
		case '\'', '"', '\\', '/':
			b.WriteByte(e)
			i += 2
		case 'b':
			b.WriteByte('\b')
			i += 2
		case 'f':
			b.WriteByte('\f')
			i += 2
		case 'n':
			b.WriteByte('\n')
			i += 2
		case 'r':
			b.WriteByte('\r')
			i += 2
		case 't':
			b.WriteByte('\t')
			i += 2
		case 'u':
			r, n, ok := decodeU(src[i:])
			if !ok {
				return token{}, l.errf(i, "invalid escape %q in string: \\u needs 4 hex digits", clip(src[i:], 6))
			}
			b.WriteRune(r)
			i += n
		default:
			r, _ := utf8.DecodeRuneInString(src[i+1:])
			return token{}, l.errf(i, "invalid escape %q in string", "\\"+string(r))
		}
	}
	l.off = i
	return token{kind: tString, pos: start, text: src[start:i], str: b.String()}, nil
}

// decodeU decodes \uXXXX (and a following low surrogate if s starts a pair).
func decodeU(s string) (rune, int, bool) {
	hex4 := func(s string) (rune, bool) {
		if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
			return 0, false
		}
		v, err := strconv.ParseUint(s[2:6], 16, 32)
		if err != nil {
			return 0, false
		}
		return rune(v), true
	}
	r, ok := hex4(s)
	if !ok {
		return 0, 0, false
	}
	if r >= 0xD800 && r < 0xDC00 {
		if lo, ok := hex4(s[6:]); ok && lo >= 0xDC00 && lo < 0xE000 {
			return (r-0xD800)<<10 + (lo - 0xDC00) + 0x10000, 12, true
		}
		return utf8.RuneError, 6, true
	}
	return r, 6, true
}

// clip shortens s to at most n runes for error messages.
func clip(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j] + "..."
		}
		i++
	}
	return s
}
