package domain

import (
	"maps"
	"slices"
	"strings"
	"unicode/utf8"
)

// Permission statuses.
const (
	PermissionActive  = "active"
	PermissionRetired = "retired"
)

// Catalog limits: the whole catalog travels in each catalog event, so it is
// bounded to stay well under the NATS payload limit.
const (
	MaxPermissions       = 1000
	MaxDescriptionLength = 500
)

// Permission is one entry of the catalog the product offers.
type Permission struct {
	Slug        string `json:"slug"`
	Description string `json:"description"`
	Status      string `json:"status"`
}

// Catalog is the set of permissions, by slug. The zero value is empty.
type Catalog struct {
	bySlug map[string]Permission
	// version counts the catalog's signed events: each one carries the
	// catalog's version after it, one more than before. 0: the empty
	// catalog, or one built by events from before catalogs had versions.
	version int64
}

// Version returns the catalog's version (see Catalog).
func (c Catalog) Version() int64 { return c.version }

// NewCatalog builds a catalog from a list.
func NewCatalog(list []Permission) Catalog {
	c := Catalog{bySlug: make(map[string]Permission, len(list))}
	for _, p := range list {
		c.bySlug[p.Slug] = p
	}
	return c
}

// List returns every permission sorted by slug.
func (c Catalog) List() []Permission {
	out := make([]Permission, 0, len(c.bySlug))
	for _, p := range c.bySlug {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Permission) int { return strings.Compare(a.Slug, b.Slug) })
	return out
}

// CheckGrantable returns invalid_argument unless every slug is defined and
// active.
func (c Catalog) CheckGrantable(slugs []string) error {
	for _, s := range slugs {
		p, ok := c.bySlug[s]
		if !ok {
			return Errorf(EInvalid, "permission %q is not defined", s)
		}
		if p.Status != PermissionActive {
			return Errorf(EInvalid, "permission %q is retired and can no longer be granted", s)
		}
	}
	return nil
}

// Define decides the effect of defining slug with description. changed is
// false when the permission already exists with that description.
// Errors: invalid_argument for a bad slug or description (over 500
// characters, or not text by CheckText, which lets tab and line feed
// through), failed_precondition
// for a retired slug (retired slugs are never reused, so keys that held one
// cannot silently regain it), failed_precondition when the catalog is full.
func (c Catalog) Define(slug, description string) (p Permission, next Catalog, changed bool, err error) {
	if err := CheckSlug(slug); err != nil {
		return Permission{}, c, false, err
	}
	if !utf8.ValidString(description) || utf8.RuneCountInString(description) > MaxDescriptionLength {
		return Permission{}, c, false, Errorf(EInvalid, "description must be valid UTF-8 of at most %d characters", MaxDescriptionLength)
	}
	if err := CheckText("description", description, true); err != nil {
		return Permission{}, c, false, err
	}
	old, ok := c.bySlug[slug]
	if ok && old.Status == PermissionRetired {
		return Permission{}, c, false, Errorf(EPrecondition, "permission %q was retired; retired slugs cannot be defined again", slug)
	}
	if ok && old.Description == description {
		return old, c, false, nil
	}
	if !ok && len(c.bySlug) >= MaxPermissions {
		return Permission{}, c, false, Errorf(EPrecondition, "the catalog already holds %d permissions, the maximum", MaxPermissions)
	}
	p = Permission{Slug: slug, Description: description, Status: PermissionActive}
	return p, c.with(p), true, nil
}

// Retire decides the effect of retiring slug. changed is false when it is
// already retired. Errors: invalid_argument for a bad slug, not_found for an
// unknown one.
func (c Catalog) Retire(slug string) (p Permission, next Catalog, changed bool, err error) {
	if err := CheckSlug(slug); err != nil {
		return Permission{}, c, false, err
	}
	old, ok := c.bySlug[slug]
	if !ok {
		return Permission{}, c, false, Errorf(ENotFound, "permission %q is not defined", slug)
	}
	if old.Status == PermissionRetired {
		return old, c, false, nil
	}
	p = Permission{Slug: slug, Description: old.Description, Status: PermissionRetired}
	return p, c.with(p), true, nil
}

// with returns a copy of c holding p (c itself never changes: catalogs are
// shared, see Service.Catalog).
func (c Catalog) with(p Permission) Catalog {
	n := Catalog{bySlug: maps.Clone(c.bySlug), version: c.version + 1}
	if n.bySlug == nil {
		n.bySlug = make(map[string]Permission, 1)
	}
	n.bySlug[p.Slug] = p
	return n
}
