// Package e2e holds ftpalg's end-to-end tests: real FTP clients and servers transfer files
// through a NAT router with a default-deny firewall, in network namespaces the tests create
// (package lab), with `ftpalg run` on the router exactly as an operator runs it.
//
// # Topology
//
// Every box is a network namespace named fe2e-<pid>-<n>-<role>. Links are veth pairs created
// inside the lab's namespaces; nothing is attached to the root namespace and no namespace has
// a route out. "sw" is a plain L2 switch (two bridges, no addresses, no firewall).
//
//	inside LAN: bridge brlan (ns sw)              outside: bridge brwan (ns sw)
//	192.0.2.0/24, 2001:db8:1::/64                 198.51.100.0/24, 2001:db8:2::/64
//
//	client  192.0.2.5   ::5 ---------+       +--- osrv  vsftpd  198.51.100.20  ::20
//	isrv    vsftpd  192.0.2.10 ::10 -+       +--- ogo   Go srv  198.51.100.21  ::21
//	igo     Go srv  192.0.2.11 ------+       +--- ocli  client  198.51.100.30  ::30
//	                                 |       |
//	                              [brlan] [brwan]
//	                                 |       |
//	                            lan  |       |  wan
//	           192.0.2.1, 2001:db8:1::1    198.51.100.1  public: SNAT source, :21 -> isrv
//	                             +-----------+ 198.51.100.2  vsftpd on the router (INPUT)
//	                             |  router   | 198.51.100.3  :21 -> igo
//	                             | table lab | 2001:db8:2::1
//	                             | ftpalg    |
//	                             +-----+-----+
//	                                   | tp  203.0.113.1, 2001:db8:3::1
//	                                   |
//	                             tp  third party 203.0.113.66, 2001:db8:3::66
//
// Router firewall (table inet lab, see lab.(*Lab).Ruleset):
//
//   - forward: policy drop; ct state established,related accept; new tcp/21 from the LAN;
//     new tcp/21 that was port-forwarded (ct status dnat).
//   - input: policy drop; lo; established,related; ICMP/ICMPv6; tcp/21 (the server on the
//     router host, on 198.51.100.2).
//   - dstnat: 198.51.100.1:21 → isrv 192.0.2.10:21 (vsftpd), 198.51.100.3:21 → igo
//     192.0.2.11:21 (ftpserverlib).
//   - srcnat: the inside IPv4 network is masqueraded; IPv6 is routed without NAT.
//   - the kernel-helper reference adds `ct helper "ftp"` on tcp/21 at prerouting/filter.
//
// The only rule a data connection can match is `ct state established,related accept`, so
// every data connection needs a pinhole (an expectation) from ftpalg or the kernel helper.
//
// # Addressing plans
//
// "grow" is the diagram above: every rewrite makes the text longer (192,0,2,5 →
// 198,51,100,1: +3 bytes; 192,0,2,10 → 198,51,100,1: +2). In "shrink" the two IPv4
// documentation ranges swap sides (inside 198.51.100.0/24 with client .200 and servers .210,
// .211; outside 192.0.2.0/24, router public 192.0.2.1), so every rewrite makes it shorter
// (198,51,100,200 → 192,0,2,1: -5 bytes). No 198.51.100.x text is shorter than a 192.0.2.x
// one, so swapping is the only way with documentation ranges.
//
// # Tests
//
//   - TestMatrix/{ftpalg,none,kernel-helper}/{grow,shrink}/<topo>/<mode>/<client>: topo is
//     snat (inside client → outside server), dnat (outside client → port-forward → inside
//     server), ipv6 (no NAT) or routerhost (server on the router, INPUT chain); mode is pasv,
//     epsv, port or eprt; client is curl or lftp (against vsftpd) or goftp (secsy/goftp
//     against ftpserverlib). Each does a download, an upload (sha256 checked on both ends),
//     LIST and (curl) NLST. With ftpalg every data connection must have a pinhole_open line
//     and NAT'd announcements a rewrite line whose delta has the plan's sign. "none" is the
//     negative control (must fail, after a successful login); "kernel-helper" the reference.
//     parallel/10-sessions runs ten downloads at once.
//   - TestAdversarial: raw TCP control traffic: a PORT split over two segments, pipelined
//     commands in one segment, a bounce PORT to the third party (to a server that would do
//     FXP), a low port, a fake 227 in a banner and in a continuation line, and a pinhole used
//     after --pinhole-timeout. TestKernelHelperSplitPort shows the kernel helper wedging on
//     the split PORT.
//   - TestHostile: hostile clients and servers (bounces in PORT/EPRT, mapped and link-local
//     addresses, wrong families, out-of-range numbers, unsolicited and disguised 227/229,
//     plaintext after AUTH TLS): no pinhole, a rejected event, the session unharmed.
//   - TestRestart, TestFailOpenClosed: kill -9 mid-session after a rewrite, ftpalg kept down
//     for seconds while the resized session goes on (the kernel carries its sequence
//     adjustment), then a restart that rebuilds the session from its conntrack entry
//     (restored, adjusting) with transfers in every mode; SIGTERM (exit 0, table kept), a new
//     session opened while ftpalg is down, then its PASV and PORT transfers after the
//     restart; fail-open and fail-closed while ftpalg is down. startFtpalg's cleanup checks
//     that SIGTERM leaves the table and that `ftpalg cleanup` (twice, exit 0) removes it.
//   - TestFaults: conntrack -F (a resized session survives: ftpalg carries its adjustment to
//     the kernel's new entry), RST after a rewrite, commands split and dribbled one byte per
//     segment, a line that never ends. TestImpairedPath: loss, duplicates and reordering on
//     both endpoints (e2e/cmd/impair, an NFQUEUE program: the kernel has no netem) while
//     every PORT/EPRT is rewritten.
//   - TestFloods: 10,000 PORT commands a second from one client, 10,000 concurrent sessions.
//     TestQueueOverflow: a stalled fail-closed ftpalg under 6,000 new sessions.
//   - TestHostileLoad: 150,000 spoofed one-packet sessions to port 21 (half SYNs, half ACKs
//     carrying a PORT command) from random addresses of the inside /64, then 150,000 from
//     random inside IPv4 addresses, as fast as a raw socket sends them (e2e/cmd/spray, in the
//     client namespace; a table of the test's own in the router counts them and drops what
//     would go back to the spoofed addresses). Each burst: ftpalg's VmRSS grows by less than
//     32 MiB, session lines stay rate-limited, the real client's PASV and PORT downloads right
//     after are inspected (rewrite, pinhole_open), no pinhole for a spoofed source.
//   - TestQueuesBalanced: --queues 2, sixteen clients: both workers own sessions, each sees
//     both directions of its own (rewritten PORT downloads intact).
//   - TestFailover/{ftpalg,kernel-helper,none}: two routers (lab.NewHA: r1, r2 on the same
//     inside and outside bridges, a sync link 203.0.113.1-.2, floating gateway 192.0.2.1 and
//     public address 198.51.100.1) with conntrackd (FTFW, ExpectationSync) and ftpalg, the
//     kernel helper, or neither on both. Sessions resized by a rewritten PORT go through r1,
//     which then fails unplanned (SIGKILL, addresses and links gone, nothing dumped); r2
//     commits and takes over. On the same control connections: NOOP, PORT and PASV
//     downloads, a PORT as the first command, a download in flight during the switch, a
//     pinhole opened on r1 and used on r2, then a failback to r1. Asserts what r2 committed
//     (helper, seqadj, expectations). The kernel helper's resized sessions die (nf_nat_ftp's
//     adjustment raises no event, so it is never replicated); "none" must fail. conntrackd
//     1.4.7 commits a replicated pinhole without its NAT; ftpalg on r2 recreates it with NAT.
//   - Issue 13, each run with ftpalg, the kernel helper and no ALG side by side, logging a
//     results table (case × setup): TestHairpin: NAT loopback (lab.Config.Hairpin: the inside
//     client dials the public address, port-forwarded to isrv and masqueraded back), PASV with
//     the client using the control address (Go client as ftplib, curl --ftp-skip-pasv-ip),
//     EPSV, PORT, EPRT downloads. TestFXP: server-to-server (PASV/EPSV and STOR on one outside
//     vsftpd, PORT/EPRT naming its endpoint and RETR on another: fxp logged, nothing opened,
//     rewritten or refused) and a PORT to an unannounced third party (still a bounce).
//     TestZones: lab.NewZones, two tenants with the same 192.0.2.0/24 and client on router
//     links in conntrack zones 7 and 2 (ct zone set at raw, SNAT to a public address each):
//     PASV and PORT per zone, and both tenants at once on the same 4-tuple, also as the first
//     connections ftpalg sees. TestNagle: a Nagle client splitting `PORT ` from its argument
//     over a 50 ms path (impair): rewritten, costing no more than the same split of MODE S.
//
// The tests need root (they skip otherwise, saying why) and vsftpd, curl, lftp, nft, ip,
// conntrackd (.ci/deps installs them; under CI=true a missing tool fails the test). TestMain
// builds cmd/ftpalg and e2e/cmd/ftppeer once.
package e2e
