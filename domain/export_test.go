package domain

// Test-only views of unexported state.

// Get returns the permission with the slug.
func (c Catalog) Get(slug string) (Permission, bool) {
	p, ok := c.bySlug[slug]
	return p, ok
}

// Len returns the number of permissions, retired ones included.
func (c Catalog) Len() int { return len(c.bySlug) }
