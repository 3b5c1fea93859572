package commands

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/keyd-dev/keyd/domain"
)

// Strict member names. encoding/json takes the last of two members with the
// same name, and matches a member name to a struct field ignoring case
// ({"NAME": ...} sets Name), so a body can mean one thing to keyd and
// another to a gateway, a WAF or a log reader in front of it. Decode refuses
// both before decoding: checkMembers walks the body's tokens beside the Go
// type it decodes into.

// maxMemberDepth is how deep checkMembers follows nested values
// (encoding/json's own limit); deeper bodies are left to the decoder, which
// refuses them.
const maxMemberDepth = 10000

// errLeaveToDecoder ends the walk where the body is not valid JSON (or too
// deep): the decoder then reports it with its own message.
var errLeaveToDecoder = errors.New("left to the decoder")

// checkMembers returns invalid_argument, naming the member, when an object
// anywhere in data (one JSON value) holds the same member name twice (after
// unescaping, as the decoder compares them), or when a member of an object
// that decodes into a struct matches none of its fields exactly but one of
// them when case is ignored (strings.EqualFold, as encoding/json folds).
// Unknown members and bodies that are not valid JSON pass: the decoder
// reports them.
func checkMembers(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // numbers are not parsed: the decoder judges them
	w := memberWalk{dec: dec}
	if err := w.value(t, "", 0); err != nil && !errors.Is(err, errLeaveToDecoder) {
		return err
	}
	return nil
}

type memberWalk struct{ dec *json.Decoder }

// value walks the next value, which decodes into t (nil: a type the walk
// does not look into, e.g. one with its own UnmarshalJSON; duplicates are
// still refused there). path names the value as messages do ("" for the
// body, "metadata", "actor").
func (w *memberWalk) value(t reflect.Type, path string, depth int) error {
	if depth > maxMemberDepth {
		return errLeaveToDecoder
	}
	tok, err := w.dec.Token()
	if err != nil {
		return errLeaveToDecoder
	}
	t = walkType(t)
	switch tok {
	case json.Delim('{'):
		return w.object(t, path, depth)
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for w.dec.More() {
			if err := w.value(elem, path+"[]", depth+1); err != nil {
				return err
			}
		}
		if _, err := w.dec.Token(); err != nil { // ']'
			return errLeaveToDecoder
		}
	}
	return nil
}

func (w *memberWalk) object(t reflect.Type, path string, depth int) error {
	var fields map[string]reflect.Type
	var elem reflect.Type
	if t != nil {
		switch t.Kind() {
		case reflect.Struct:
			fields = jsonFields(t)
		case reflect.Map:
			elem = t.Elem()
		}
	}
	seen := make(map[string]struct{})
	for w.dec.More() {
		tok, err := w.dec.Token()
		if err != nil {
			return errLeaveToDecoder
		}
		name, ok := tok.(string)
		if !ok {
			return errLeaveToDecoder
		}
		if _, dup := seen[name]; dup {
			return memberError(path, "member %q appears more than once", name)
		}
		seen[name] = struct{}{}
		vt := elem
		if fields != nil {
			ft, exact := fields[name]
			if !exact {
				for known := range fields {
					if strings.EqualFold(known, name) {
						return memberError(path, "unknown field %q (member names are case-sensitive: did you mean %q?)", name, known)
					}
				}
			}
			vt = ft // nil for an unknown member: the decoder refuses it
		}
		if err := w.value(vt, join(path, name), depth+1); err != nil {
			return err
		}
	}
	if _, err := w.dec.Token(); err != nil { // '}'
		return errLeaveToDecoder
	}
	return nil
}

// memberError is an invalid_argument about a member of the object at path
// ("" for the body itself).
func memberError(path, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg += fmt.Sprintf(" in %q", path)
	}
	return domain.Errorf(domain.EInvalid, "%s", msg)
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// walkType is the type the walk looks into for a value decoding into t:
// pointers followed, nil for interfaces and for types that decode
// themselves (time.Time).
func walkType(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() == reflect.Interface {
		return nil
	}
	pt := reflect.PointerTo(t)
	if pt.Implements(jsonUnmarshaler) || pt.Implements(textUnmarshaler) {
		return nil
	}
	return t
}

var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// jsonFields returns the JSON member names of struct type t with their
// types, as encoding/json sees them: tag names (or Go names), "-" left out,
// the fields of untagged embedded structs promoted (an outer field wins).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if f, ok := fieldCache.Load(t); ok {
		return f.(map[string]reflect.Type)
	}
	out := make(map[string]reflect.Type)
	addFields(t, out, 0)
	fieldCache.Store(t, out)
	return out
}

func addFields(t reflect.Type, out map[string]reflect.Type, depth int) {
	var embedded []reflect.Type
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			et := f.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				embedded = append(embedded, et)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if _, taken := out[name]; !taken {
			out[name] = f.Type
		}
	}
	if depth < 8 {
		for _, et := range embedded {
			addFields(et, out, depth+1)
		}
	}
}

// CheckMembers is Decode's check of member names (a name repeated in one
// object, or one that matches a field of v's type only when case is
// ignored) for a body a route decodes itself: one larger than MaxBytes, or
// a payload whose unknown members are allowed (a partner's, such as
// GitHub's leak reports). v is what the body will be decoded into.
func CheckMembers(data []byte, v any) error {
	return checkMembers(data, reflect.TypeOf(v))
}
