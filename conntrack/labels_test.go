package conntrack

import (
	"errors"
	"net/netip"
	"testing"
)

// labelRule makes the kernel give new entries a label area: loading a rule that uses ct label
// is enough (Linux 6.18; package rules' table has such a rule). Without one, see
// TestSetLabelErrors.
const labelRule = `
table inet ftpalg_labels {
	chain c {
		type filter hook output priority filter; policy accept;
		ct label 127 counter
	}
}
`

func TestSetLabel(t *testing.T) {
	for _, ip := range []netip.Addr{lo4, lo6} {
		t.Run(ip.String(), func(t *testing.T) {
			l := newLab(t)
			l.nft(labelRule)
			orig := l.master(ip, 21)
			f, err := l.c.Lookup(orig)
			if err != nil {
				t.Fatal(err)
			}
			for _, step := range []struct {
				bit  int
				on   bool
				want map[int]bool
			}{
				{bit: 127, on: true, want: map[int]bool{127: true, 0: false, 31: false}},
				{bit: 0, on: true, want: map[int]bool{127: true, 0: true}},
				{bit: 127, on: false, want: map[int]bool{127: false, 0: true}},
			} {
				if err := l.c.SetLabel(f, step.bit, step.on); err != nil {
					t.Fatalf("SetLabel(%d, %v): %v", step.bit, step.on, err)
				}
				for bit, want := range step.want {
					got, err := l.c.Label(f, bit)
					if err != nil {
						t.Fatal(err)
					}
					if got != want {
						t.Errorf("after SetLabel(%d, %v): bit %d = %v, want %v", step.bit, step.on, bit, got, want)
					}
				}
			}
		})
	}
}

func TestSetLabelErrors(t *testing.T) {
	l := newLab(t)
	// No label rule loaded: the entry has no label area.
	orig := l.master(lo4, 21)
	f, err := l.c.Lookup(orig)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.c.SetLabel(f, 127, true); !errors.Is(err, ErrNoLabels) {
		t.Errorf("SetLabel without a label area = %v, want %v", err, ErrNoLabels)
	}
	for _, bit := range []int{-1, 128} {
		if err := l.c.SetLabel(f, bit, true); !errors.Is(err, errLabelBit) {
			t.Errorf("SetLabel bit %d = %v, want %v", bit, err, errLabelBit)
		}
	}
	gone := f
	gone.Orig.Src = netip.AddrPortFrom(lo4, 1)
	if err := l.c.SetLabel(gone, 127, true); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetLabel on a missing entry = %v, want %v", err, ErrNotFound)
	}
}

func TestLabelAttrs(t *testing.T) {
	for _, bit := range []int{0, 7, 31, 32, 64, 127} {
		l, m := labelAttrs(bit, true)
		if !labelSet(l, bit) || !labelSet(m, bit) {
			t.Errorf("bit %d not set: %x %x", bit, l, m)
		}
		for other := range MaxLabel + 1 {
			if other != bit && (labelSet(l, other) || labelSet(m, other)) {
				t.Errorf("bit %d: bit %d set too", bit, other)
			}
		}
		l, m = labelAttrs(bit, false)
		if labelSet(l, bit) || !labelSet(m, bit) {
			t.Errorf("clear bit %d: %x %x", bit, l, m)
		}
	}
}
