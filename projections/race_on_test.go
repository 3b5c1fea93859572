//go:build race

package projections

// raceEnabled: the race detector slows the projector several times over,
// so timing goals are not checked under it.
const raceEnabled = true
