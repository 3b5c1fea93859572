package bench

import (
	"slices"
	"time"
)

// latencies is a sample of durations.
type latencies []time.Duration

// sorted returns the sample sorted (a copy).
func (l latencies) sorted() latencies {
	s := slices.Clone(l)
	slices.Sort(s)
	return s
}

// pct returns the q-quantile (0..1) of a sorted sample by nearest rank: the
// smallest value at or above which lies a fraction q of the sample.
func (l latencies) pct(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	i := int(q*float64(len(l))+0.999999999) - 1
	i = max(0, min(i, len(l)-1))
	return l[i]
}

// max returns the largest value of a sorted sample.
func (l latencies) max() time.Duration {
	if len(l) == 0 {
		return 0
	}
	return l[len(l)-1]
}

// ms is d in milliseconds, rounded to microseconds.
func ms(d time.Duration) float64 { return round(float64(d)/1e6, 3) }
