package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// ctnetlink attributes of conntrack labels (nfnetlink_conntrack.h) and the label area's size
// (NF_CT_LABELS_MAX_SIZE: 128 bits).
const (
	ctaLabels     = 22 // CTA_LABELS
	ctaLabelsMask = 23 // CTA_LABELS_MASK
	labelBytes    = 16
	// MaxLabel is the highest conntrack label bit.
	MaxLabel = labelBytes*8 - 1
)

// ErrNoLabels: the connection's conntrack entry has no label area. The kernel gives new
// entries one only while a rule of the namespace uses conntrack labels (package rules' skip
// rule `ct label N return` is one; measured on Linux 6.18): a connection that began before
// ftpalg's table was loaded has none.
var ErrNoLabels = errors.New("connection has no conntrack label area (no label rule loaded when it began)")

var errLabelBit = errors.New("label bit out of range 0-127")

// SetLabel sets (on) or clears conntrack label bit of the connection f (found by f.Orig in
// f.Zone), leaving its other label bits alone (CTA_LABELS with CTA_LABELS_MASK). ftpalg's
// nftables table lets the packets of a connection with rules.Config.SkipLabel set pass
// without queueing them. The change applies to the next packet of the connection; conntrackd
// replicates it with the entry.
func (c *Conn) SetLabel(f Flow, bit int, on bool) error {
	f.Orig = f.Orig.unmap()
	if !f.Orig.IsValid() {
		return fmt.Errorf("set label %s: %w", f.Orig, errBadTuple)
	}
	if bit < 0 || bit > MaxLabel {
		return fmt.Errorf("set label %s: bit %d: %w", f.Orig, bit, errLabelBit)
	}
	labels, mask := labelAttrs(bit, on)
	attrs := []netfilter.Attribute{tupleAttr(ctaTupleOrig, f.Orig.Src, f.Orig.Dst)}
	if f.Zone != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaZone, Data: netfilter.Uint16Bytes(f.Zone)})
	}
	attrs = append(attrs,
		netfilter.Attribute{Type: ctaLabels, Data: labels},
		netfilter.Attribute{Type: ctaLabelsMask, Data: mask},
	)
	// IPCTNL_MSG_CT_NEW without NLM_F_CREATE updates an existing entry only; an entry without
	// the label extension refuses labels with ENOSPC.
	if err := c.query(netfilter.NFSubsysCTNetlink, ipctnlMsgCTNew, family(f.Orig.Src.Addr()), attrs); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("set label %s bit %d: %w (%w)", f.Orig, bit, ErrNoLabels, err)
		}
		return kernelErr("set label", f.Orig.String(), err, errnoFlow)
	}
	return nil
}

// Label reports whether label bit is set on the connection f.
func (c *Conn) Label(f Flow, bit int) (bool, error) {
	if bit < 0 || bit > MaxLabel {
		return false, fmt.Errorf("label %s: bit %d: %w", f.Orig, bit, errLabelBit)
	}
	got, err := c.get(f.Orig.unmap(), f.Zone)
	if err != nil {
		return false, kernelErr("get label", f.Orig.String(), err, errnoFlow)
	}
	return labelSet(got.Labels, bit), nil
}

// labelAttrs returns CTA_LABELS and CTA_LABELS_MASK for one bit. The kernel reads both as
// arrays of 32-bit words in host order (nf_connlabels_replace) over its bitmap, in which bit
// n is bit n%32 of word n/32.
func labelAttrs(bit int, on bool) (labels, mask []byte) {
	labels, mask = make([]byte, labelBytes), make([]byte, labelBytes)
	w := bit / 32 * 4
	binary.NativeEndian.PutUint32(mask[w:], 1<<(bit%32))
	if on {
		binary.NativeEndian.PutUint32(labels[w:], 1<<(bit%32))
	}
	return labels, mask
}

// labelSet reports whether bit is set in the kernel's label words b.
func labelSet(b []byte, bit int) bool {
	w := bit / 32 * 4
	if w+4 > len(b) {
		return false
	}
	return binary.NativeEndian.Uint32(b[w:])&(1<<(bit%32)) != 0
}
