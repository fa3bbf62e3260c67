package alg

// Telnet (RFC 854) bytes that FTP clients put on the control connection before ABOR: IAC IP
// (interrupt process) and IAC DM (data mark, sent as urgent data).
const (
	iac      = 0xff // interpret as command
	telnetDM = 0xf2 // data mark
	telnetWW = 0xfb // WILL, WONT, DO, DONT (0xfb-0xfe) take one option byte; 0xf0-0xfa none
)

// skipTelnet returns the length of the Telnet commands at the start of b: IAC followed by a
// command byte (IAC IP, IAC DM, ...), or by WILL/WONT/DO/DONT and an option byte. A DM left
// alone at the start (its IAC went as urgent data in an earlier line end's segment, or some
// clients send DM only) is skipped too. IAC IAC is a data byte 0xff, not a command: it stops.
func skipTelnet(b []byte) int {
	i := 0
	for i < len(b) {
		switch {
		case b[i] == telnetDM: // DM on its own
			i++
		case b[i] == iac && i+1 < len(b) && b[i+1] >= 0xf0 && b[i+1] < telnetWW:
			i += 2
		case b[i] == iac && i+2 < len(b) && b[i+1] >= telnetWW && b[i+1] < iac:
			i += 3
		default:
			return i
		}
	}
	return i
}

// classify returns the kind of a client verb (as it stands on the line, any case) and
// whether it is a known FTP verb. The known verbs are those of RFC 959 and of the extensions
// real clients send (see doc.go); anything else on a client line means the connection is not
// an FTP dialogue.
func classify(verb []byte) (Cmd, bool) {
	if len(verb) < 3 || len(verb) > 7 {
		return CmdOther, false
	}
	var v [7]byte
	for i, c := range verb {
		v[i] = upper(c)
	}
	switch string(v[:len(verb)]) {
	case "PORT":
		return CmdPORT, true
	case "EPRT":
		return CmdEPRT, true
	case "PASV":
		return CmdPASV, true
	case "EPSV":
		return CmdEPSV, true
	case "LPRT":
		return CmdLPRT, true
	case "LPSV":
		return CmdLPSV, true
	case "AUTH":
		return CmdAUTH, true
	case
		// RFC 959
		"USER", "PASS", "ACCT", "CWD", "CDUP", "SMNT", "REIN", "QUIT", "TYPE", "STRU", "MODE",
		"RETR", "STOR", "STOU", "APPE", "ALLO", "REST", "RNFR", "RNTO", "ABOR", "DELE", "RMD",
		"MKD", "PWD", "LIST", "NLST", "SITE", "SYST", "STAT", "HELP", "NOOP",
		// RFC 2228 (security), 2389 (FEAT, OPTS), 2640 (LANG), 3659, 7151 (HOST)
		"ADAT", "PROT", "PBSZ", "CCC", "MIC", "CONF", "ENC", "FEAT", "OPTS", "LANG",
		"MDTM", "SIZE", "MLST", "MLSD", "HOST",
		// RFC 775 (Windows ftp.exe sends XPWD, XMKD, XRMD)
		"XCUP", "XCWD", "XMKD", "XPWD", "XRMD",
		// Drafts and de facto extensions: client name (CLNT: lftp, NcFTP; CSID: WinSCP),
		// times (MFMT, MFCT, MFF: FileZilla, lftp, WinSCP), checksums (XCRC, XMD5, XSHA*, HASH,
		// RANG: WinSCP, lftp), free space and sizes (AVBL, DSIZ), PRET (curl --ftp-pret,
		// FileZilla, lftp against distributed servers), SSL site-to-site (SSCN, CPSV: lftp FXP).
		"CLNT", "CSID", "MFMT", "MFCT", "MFF", "XCRC", "XMD5", "XSHA", "XSHA1", "XSHA256",
		"XSHA512", "HASH", "RANG", "AVBL", "DSIZ", "PRET", "SSCN", "CPSV":
		return CmdOther, true
	}
	return CmdOther, false
}
