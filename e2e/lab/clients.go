package lab

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Mode is an FTP data-connection mode.
type Mode string

// The four modes. PASV and EPSV are passive (the client connects), PORT and EPRT active (the
// server connects back).
const (
	PASV Mode = "pasv"
	EPSV Mode = "epsv"
	PORT Mode = "port"
	EPRT Mode = "eprt"
)

// Active reports whether the server opens the data connection.
func (m Mode) Active() bool { return m == PORT || m == EPRT }

// Command is the command or reply ftpalg sees for the mode ("PORT", "EPRT", "227", "229").
func (m Mode) Command() string {
	switch m {
	case PASV:
		return "227"
	case EPSV:
		return "229"
	case PORT:
		return "PORT"
	case EPRT:
		return "EPRT"
	}
	return ""
}

// Op is one client operation, each with one data connection.
type Op string

// The operations a client performs.
const (
	Get  Op = "get"  // RETR pub/data.bin
	Put  Op = "put"  // STOR incoming/<name>
	List Op = "list" // LIST pub/
	Nlst Op = "nlst" // NLST pub/
)

// Transfer describes one client run.
type Transfer struct {
	Op      Op
	Mode    Mode
	Server  string // ftp://host/ URL base, e.g. URL(addr, "")
	Local   string // local file: destination of Get, source of Put, listing output of List/Nlst
	Remote  string // remote name for Put (under incoming/)
	Timeout time.Duration
}

func (t Transfer) remotePath() string {
	switch t.Op {
	case Get:
		return "pub/" + FileName
	case Put:
		return "incoming/" + t.Remote
	default:
		return "pub/"
	}
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) }

// CurlArgs returns the curl command line for a transfer.
func CurlArgs(t Transfer) []string {
	if t.Timeout == 0 {
		t.Timeout = 20 * time.Second
	}
	args := []string{"-sS", "-v", "--connect-timeout", secs(min(t.Timeout, 5*time.Second)), "--max-time", secs(t.Timeout)}
	switch t.Mode {
	case PASV:
		args = append(args, "--ftp-pasv", "--disable-epsv")
	case EPSV:
		args = append(args, "--ftp-pasv")
	case PORT:
		args = append(args, "--ftp-port", "-", "--disable-eprt")
	case EPRT:
		args = append(args, "--ftp-port", "-")
	}
	url := strings.TrimSuffix(t.Server, "/") + "/" + t.remotePath()
	switch t.Op {
	case Get, List:
		args = append(args, "-o", t.Local, url)
	case Nlst:
		args = append(args, "--list-only", "-o", t.Local, url)
	case Put:
		args = append(args, "-T", t.Local, url)
	}
	return args
}

// LftpScript returns the lftp -c script for a transfer.
func LftpScript(t Transfer) string {
	if t.Timeout == 0 {
		t.Timeout = 20 * time.Second
	}
	s := []string{
		"set net:timeout " + strconv.Itoa(int(max(t.Timeout/time.Second/2, 2))),
		"set net:max-retries 1",
		"set net:reconnect-interval-base 1",
		"set ftp:fix-pasv-address no",
		"set ftp:use-mlsd no",
		"set xfer:clobber yes",
	}
	switch t.Mode {
	case PASV:
		s = append(s, "set ftp:passive-mode on", "set ftp:prefer-epsv no")
	case EPSV:
		s = append(s, "set ftp:passive-mode on", "set ftp:prefer-epsv yes")
	case PORT, EPRT:
		s = append(s, "set ftp:passive-mode off")
	}
	s = append(s, "open "+strings.TrimSuffix(t.Server, "/"))
	switch t.Op {
	case Get:
		s = append(s, fmt.Sprintf("get %s -o %s", t.remotePath(), t.Local))
	case Put:
		s = append(s, fmt.Sprintf("put %s -o %s", t.Local, t.remotePath()))
	case List:
		s = append(s, fmt.Sprintf("ls %s > %s", t.remotePath(), t.Local))
	case Nlst:
		s = append(s, fmt.Sprintf("nlist %s > %s", t.remotePath(), t.Local))
	}
	return strings.Join(s, "; ")
}

// FtppeerArgs returns the Go client's (ftppeer) command line for a transfer.
func FtppeerArgs(t Transfer) []string {
	if t.Timeout == 0 {
		t.Timeout = 20 * time.Second
	}
	host := strings.TrimSuffix(strings.TrimPrefix(t.Server, "ftp://"), "/")
	args := []string{"client", "-server", host + ":21", "-timeout", t.Timeout.String(), "-op", string(t.Op), "-local", t.Local, "-remote", t.remotePath()}
	switch t.Mode {
	case PASV:
		args = append(args, "-disable-epsv")
	case PORT, EPRT:
		args = append(args, "-active")
	}
	return args
}

// Tool is an FTP client program.
type Tool string

// The clients.
const (
	Curl  Tool = "curl"
	Lftp  Tool = "lftp"
	GoFTP Tool = "goftp" // github.com/secsy/goftp, in the ftppeer binary
)

// RunClient runs one transfer with a client tool in a role's namespace. ftppeer is the path
// of the ftppeer binary (used for GoFTP).
func (l *Lab) RunClient(ctx context.Context, r Role, tool Tool, ftppeer string, t Transfer) Result {
	switch tool {
	case Curl:
		return l.Run(ctx, r, "curl", CurlArgs(t)...)
	case Lftp:
		return l.Run(ctx, r, "lftp", "-c", LftpScript(t))
	case GoFTP:
		return l.Run(ctx, r, ftppeer, FtppeerArgs(t)...)
	}
	return Result{ExitCode: -1, Err: fmt.Errorf("unknown tool %q", tool)}
}
