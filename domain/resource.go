package domain

import (
	"slices"
	"strings"
)

// Limits on resources.
const (
	MaxKeyResources       = 100
	MaxResourceTypeLength = 64
	MaxResourceIDLength   = 256
)

// SplitResource splits a resource "<type>:<id>" at its first ':' (the id may
// hold more). ok is false when there is no ':'.
func SplitResource(r string) (typ, id string, ok bool) {
	return strings.Cut(r, ":")
}

// CheckResource returns invalid_argument, naming field, unless r is a
// resource: "<type>:<id>", the type ^[a-z][a-z0-9_-]{0,63}$, the id (after
// the first ':') 1 to 256 characters of [A-Za-z0-9_.:/@-].
func CheckResource(field, r string) error {
	typ, id, ok := SplitResource(r)
	if !ok {
		return Errorf(EInvalid, "%s %q must be \"<type>:<id>\", for example \"project:p_123\"", field, r)
	}
	if !validResourceType(typ) {
		return Errorf(EInvalid, "%s %q: the type %q must match ^[a-z][a-z0-9_-]{0,63}$", field, r, typ)
	}
	if len(id) < 1 || len(id) > MaxResourceIDLength {
		return Errorf(EInvalid, "%s %q: the id after the first \":\" must be 1 to %d characters, got %d", field, r, MaxResourceIDLength, len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(isAlnum(c) || c == '_' || c == '.' || c == ':' || c == '/' || c == '@' || c == '-') {
			return Errorf(EInvalid, "%s %q: the id may hold only letters, digits and _ . : / @ -", field, r)
		}
	}
	return nil
}

func validResourceType(t string) bool {
	if len(t) < 1 || len(t) > MaxResourceTypeLength || t[0] < 'a' || t[0] > 'z' {
		return false
	}
	for i := 1; i < len(t); i++ {
		c := t[i]
		if !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// NormalizeResources checks every resource (CheckResource), at most 100,
// and returns them sorted and de-duplicated (never nil).
func NormalizeResources(rs []string) ([]string, error) {
	if len(rs) > MaxKeyResources {
		return nil, Errorf(EInvalid, "a key can list at most %d resources, got %d", MaxKeyResources, len(rs))
	}
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		if err := CheckResource("resource", r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ResourceAllowed reports whether a key listing resources (sorted, as
// NormalizeResources returns them) may act on resource "<type>:<id>": for
// each type the key lists it may act only on the listed ids of that type;
// types it lists nothing for, and keys without resources, are unrestricted.
// It does not allocate.
func ResourceAllowed(resources []string, resource string) bool {
	if len(resources) == 0 {
		return true
	}
	// Listed: the common case of an allowed request, one search.
	pos, found := slices.BinarySearch(resources, resource)
	if found {
		return true
	}
	i := strings.IndexByte(resource, ':')
	if i < 0 {
		return false
	}
	prefix := resource[:i+1] // "<type>:"
	// Not listed: allowed unless the key lists some id of the type. The
	// entries starting with prefix are contiguous, all at or after prefix
	// and before resource; the first of them is where prefix would go.
	first, _ := slices.BinarySearch(resources[:pos], prefix)
	return first == pos && (pos == len(resources) || !strings.HasPrefix(resources[pos], prefix))
}
