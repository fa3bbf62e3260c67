package gateway

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ftpalg/ftpalg/conntrack/queue"
)

// Metric names, kept as constants that tests reference. Labels take bounded values only.
const (
	mBuildInfo       = "ftpalg_build_info"
	mSessions        = "ftpalg_sessions"
	mSessionsTotal   = "ftpalg_sessions_total"
	mPackets         = "ftpalg_packets_total"
	mRewrites        = "ftpalg_rewrites_total"
	mPinholesOpened  = "ftpalg_pinholes_opened_total"
	mPinholesUsed    = "ftpalg_pinholes_used_total"
	mPinholesExpired = "ftpalg_pinholes_expired_total"
	mPinholesClosed  = "ftpalg_pinholes_closed_total"
	mRejections      = "ftpalg_rejections_total"
	mNotes           = "ftpalg_notes_total"
	mQueueErrors     = "ftpalg_queue_errors_total"
	mKernelErrors    = "ftpalg_kernel_errors_total"
	mPacketSeconds   = "ftpalg_packet_duration_seconds"
	mQueueBacklog    = "ftpalg_queue_backlog"
	mQueueDropped    = "ftpalg_queue_kernel_dropped_total"
	mQueueUserDrop   = "ftpalg_queue_socket_dropped_total"
	mFXP             = "ftpalg_fxp_total"
)

// Packet verdict labels.
const (
	vAccept   = "accept"   // released unchanged
	vModified = "modified" // released with a rewritten payload or shifted seq/ack
	vDrop     = "drop"     // dropped (superseded held packet, worker overloaded, undecodable with a shifted session)
	vHold     = "hold"     // held back to join a command split across segments
	vBypass   = "bypass"   // not inspected (not decodable, session limit, TLS)
)

type metrics struct {
	reg            *prometheus.Registry
	sessions       prometheus.Gauge
	sessionsTotal  prometheus.Counter
	packets        *prometheus.CounterVec
	rewrites       *prometheus.CounterVec
	pinholesOpened prometheus.Counter
	fxp            prometheus.Counter
	pinholesUsed   prometheus.Counter
	pinholesExp    prometheus.Counter
	pinholesClosed *prometheus.CounterVec
	rejections     *prometheus.CounterVec
	notes          *prometheus.CounterVec
	queueErrors    prometheus.Counter
	kernelErrors   *prometheus.CounterVec
	packetSeconds  prometheus.Histogram

	// Per-label children resolved once, so the packet path does no label lookups.
	pAccept, pModified, pDrop, pHold, pBypass prometheus.Counter
}

func newMetrics(version string) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: mBuildInfo, Help: "Build information."}, []string{"version"})
	bi.WithLabelValues(version).Set(1)
	m.sessions = prometheus.NewGauge(prometheus.GaugeOpts{Name: mSessions, Help: "FTP control sessions tracked now."})
	m.sessionsTotal = prometheus.NewCounter(prometheus.CounterOpts{Name: mSessionsTotal, Help: "FTP control sessions seen."})
	m.packets = prometheus.NewCounterVec(prometheus.CounterOpts{Name: mPackets, Help: "Control packets by verdict."}, []string{"verdict"})
	m.rewrites = prometheus.NewCounterVec(prometheus.CounterOpts{Name: mRewrites, Help: "Payload rewrites by command."}, []string{"cmd"})
	m.fxp = prometheus.NewCounter(prometheus.CounterOpts{Name: mFXP, Help: "Server-to-server (FXP) PORT/EPRT commands passed unchanged, without a pinhole."})
	m.pinholesOpened = prometheus.NewCounter(prometheus.CounterOpts{Name: mPinholesOpened, Help: "Pinholes (expectations) created."})
	m.pinholesUsed = prometheus.NewCounter(prometheus.CounterOpts{Name: mPinholesUsed, Help: "Pinholes used by a data connection."})
	m.pinholesExp = prometheus.NewCounter(prometheus.CounterOpts{Name: mPinholesExpired, Help: "Pinholes removed unused at --pinhole-timeout."})
	m.pinholesClosed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: mPinholesClosed, Help: "Pinholes closed otherwise, by reason."}, []string{"reason"})
	m.rejections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: mRejections, Help: "Refused commands and replies, by reason."}, []string{"reason"})
	m.notes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: mNotes, Help: "Stream anomalies (long lines, resyncs), by reason."}, []string{"reason"})
	m.queueErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: mQueueErrors, Help: "NFQUEUE receive and verdict errors."})
	m.kernelErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: mKernelErrors, Help: "Conntrack requests that failed, by operation."}, []string{"op"})
	m.packetSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    mPacketSeconds,
		Help:    "Time from reading a control packet off the queue to its verdict.",
		Buckets: prometheus.ExponentialBuckets(1e-6, 2, 18), // 1µs .. 131ms
	})
	m.reg.MustRegister(bi, m.sessions, m.sessionsTotal, m.packets, m.rewrites, m.pinholesOpened, m.fxp,
		m.pinholesUsed, m.pinholesExp, m.pinholesClosed, m.rejections, m.notes, m.queueErrors,
		m.kernelErrors, m.packetSeconds)
	m.pAccept = m.packets.WithLabelValues(vAccept)
	m.pModified = m.packets.WithLabelValues(vModified)
	m.pDrop = m.packets.WithLabelValues(vDrop)
	m.pHold = m.packets.WithLabelValues(vHold)
	m.pBypass = m.packets.WithLabelValues(vBypass)
	return m
}

// queueCollector reads the kernel's counters of ftpalg's queues at scrape time: packets
// waiting for a verdict, dropped because the queue was full (fail-closed; with --fail-open
// the kernel accepts them uninspected and counts nothing), dropped because ftpalg's socket
// buffer was full.
type queueCollector struct {
	first, n uint16
	read     func() (map[uint16]queue.Stats, error)
	backlog  *prometheus.Desc
	dropped  *prometheus.Desc
	userDrop *prometheus.Desc
}

func newQueueCollector(first, n uint16) *queueCollector {
	l := []string{"queue"}
	return &queueCollector{
		first: first, n: n, read: queue.ReadStats,
		backlog:  prometheus.NewDesc(mQueueBacklog, "Control packets waiting in the kernel queue for a verdict.", l, nil),
		dropped:  prometheus.NewDesc(mQueueDropped, "Control packets the kernel dropped because the queue was full (without --fail-open).", l, nil),
		userDrop: prometheus.NewDesc(mQueueUserDrop, "Control packets the kernel dropped because ftpalg's socket buffer was full.", l, nil),
	}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.backlog
	ch <- c.dropped
	ch <- c.userDrop
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.read()
	if err != nil {
		return
	}
	for i := uint16(0); i < c.n; i++ {
		q := c.first + i
		st, ok := stats[q]
		if !ok {
			continue
		}
		l := strconv.Itoa(int(q))
		ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(st.Backlog), l)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.Dropped), l)
		ch <- prometheus.MustNewConstMetric(c.userDrop, prometheus.CounterValue, float64(st.UserDropped), l)
	}
}
