package alg

// Next returns the sequence number of the next byte direction d is expected to send (ok is
// false until the direction has been seen). The daemon uses it to tell an in-window RST from
// a blind one (RFC 5961 §3: only an RST whose sequence number is exactly the next expected
// one resets; any other is answered with a challenge ACK by the endpoint).
func (s *Session) Next(d Dir) (seq uint32, ok bool) {
	if d > FromServer || !s.dirs[d].init {
		return 0, false
	}
	return s.dirs[d].next, true
}
