package lab

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// FileName is the file every server offers under pub/; uploads go to incoming/.
const FileName = "data.bin"

// FileSize is the size of the offered file (a few hundred KB of random bytes).
const FileSize = 300 << 10

// FTPServer is a running FTP server in the lab.
type FTPServer struct {
	Kind string // "vsftpd" or "goftp" (the ftpserverlib peer)
	Role Role   // namespace
	Addr netip.Addr
	Dir  string // root directory: pub/ (readable) and incoming/ (writable)
	SHA  string // sha256 of pub/data.bin
	Proc *Proc
	Log  *SyncBuffer
}

// Incoming returns the path of an uploaded file.
func (s *FTPServer) Incoming(name string) string { return filepath.Join(s.Dir, "incoming", name) }

// URL returns ftp://addr/path (IPv6 in brackets).
func (s *FTPServer) URL(path string) string { return URL(s.Addr, path) }

// URL returns ftp://addr/path for an address on port 21.
func URL(addr netip.Addr, path string) string {
	h := addr.String()
	if addr.Is6() {
		h = "[" + h + "]"
	}
	return "ftp://" + h + "/" + strings.TrimPrefix(path, "/")
}

// RandomFile writes n random bytes to path and returns their sha256 (hex).
func RandomFile(path string, n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

// FileSHA returns the sha256 (hex) and size of a file.
func FileSHA(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// makeRoot prepares an FTP root: dir (root-owned, 0755, as vsftpd's chroot wants it),
// pub/data.bin (world-readable) and incoming/ (writable by everyone: vsftpd writes as the
// ftp user).
func makeRoot(dir string) (string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "pub"), 0o755); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	inc := filepath.Join(dir, "incoming")
	if err := os.MkdirAll(inc, 0o777); err != nil {
		return "", err
	}
	if err := os.Chmod(inc, 0o777); err != nil {
		return "", err
	}
	return RandomFile(filepath.Join(dir, "pub", FileName), FileSize)
}

// VsftpdOptions tunes a vsftpd instance.
type VsftpdOptions struct {
	// PasvAddress is vsftpd's pasv_address (the address it announces in 227), if set.
	PasvAddress netip.Addr
	// PortPromiscuous (port_promiscuous) lets a PORT/EPRT name any address, not only the
	// control connection's peer: the server that connects out in an FXP transfer.
	PortPromiscuous bool
	// PasvPromiscuous (pasv_promiscuous) accepts a passive data connection from any address,
	// not only the control connection's peer: the server that listens in an FXP transfer.
	PasvPromiscuous bool
}

// StartVsftpd runs vsftpd in the foreground in a role's namespace, listening on addr:21, with
// anonymous download and upload, PASV/EPSV and PORT/EPRT enabled. dir is a fresh directory
// for its root, config and logs.
func (l *Lab) StartVsftpd(ctx context.Context, r Role, addr netip.Addr, dir string, opt VsftpdOptions) (*FTPServer, error) {
	root := filepath.Join(dir, "root")
	sha, err := makeRoot(root)
	if err != nil {
		return nil, fmt.Errorf("vsftpd root: %w", err)
	}
	conf := []string{
		"background=NO",
		"anonymous_enable=YES",
		"no_anon_password=YES",
		"local_enable=NO",
		"write_enable=YES",
		"anon_upload_enable=YES",
		"anon_mkdir_write_enable=YES",
		"anon_other_write_enable=YES",
		"anon_umask=022",
		"anon_root=" + root,
		"pasv_enable=YES",
		"port_enable=YES",
		"connect_from_port_20=NO",
		"seccomp_sandbox=NO",
		"isolate_network=NO",
		"ftp_username=ftp",
		"secure_chroot_dir=/var/run/vsftpd/empty",
		"xferlog_enable=YES",
		"xferlog_std_format=NO",
		"log_ftp_protocol=YES",
		"vsftpd_log_file=" + filepath.Join(dir, "vsftpd.log"),
		"max_clients=200",
		"max_per_ip=100",
		"data_connection_timeout=20",
		"accept_timeout=20",
		"connect_timeout=20",
		"idle_session_timeout=60",
	}
	if addr.Is6() {
		conf = append(conf, "listen=NO", "listen_ipv6=YES", "listen_address6="+addr.String())
	} else {
		conf = append(conf, "listen=YES", "listen_ipv6=NO", "listen_address="+addr.String())
	}
	if opt.PasvAddress.IsValid() {
		conf = append(conf, "pasv_address="+opt.PasvAddress.String())
	}
	if opt.PortPromiscuous {
		conf = append(conf, "port_promiscuous=YES")
	}
	if opt.PasvPromiscuous {
		conf = append(conf, "pasv_promiscuous=YES")
	}
	cf := filepath.Join(dir, "vsftpd.conf")
	if err := os.WriteFile(cf, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	logb := &SyncBuffer{}
	p, err := l.Start(r, logb, logb, "vsftpd", cf)
	if err != nil {
		return nil, err
	}
	s := &FTPServer{Kind: "vsftpd", Role: r, Addr: addr, Dir: root, SHA: sha, Proc: p, Log: logb}
	if err := l.waitFTP(ctx, r, addr, p); err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "vsftpd.log"))
		return nil, fmt.Errorf("vsftpd on %s: %w (output %q, log %q)", addr, err, logb.String(), b)
	}
	return s, nil
}

// GoServerOptions tunes the ftpserverlib peer.
type GoServerOptions struct {
	PublicHost netip.Addr // announced in 227 if set
	// NoIPCheck disables the library's check that data connections and PORT targets match
	// the control peer: a server that would do FXP, i.e. act on a bounce PORT.
	NoIPCheck bool
}

// StartGoServer runs the ftpserverlib peer (ftppeer serve) in a role's namespace on addr:21.
func (l *Lab) StartGoServer(ctx context.Context, ftppeer string, r Role, addr netip.Addr, dir string, opt GoServerOptions) (*FTPServer, error) {
	root := filepath.Join(dir, "root")
	sha, err := makeRoot(root)
	if err != nil {
		return nil, fmt.Errorf("go server root: %w", err)
	}
	args := []string{"serve", "-listen", netip.AddrPortFrom(addr, 21).String(), "-root", root}
	if opt.PublicHost.IsValid() {
		args = append(args, "-public-host", opt.PublicHost.String())
	}
	if opt.NoIPCheck {
		args = append(args, "-no-ip-check")
	}
	logb := &SyncBuffer{}
	p, err := l.Start(r, logb, logb, ftppeer, args...)
	if err != nil {
		return nil, err
	}
	s := &FTPServer{Kind: "goftp", Role: r, Addr: addr, Dir: root, SHA: sha, Proc: p, Log: logb}
	if err := l.waitFTP(ctx, r, addr, p); err != nil {
		return nil, fmt.Errorf("go server on %s: %w (output %q)", addr, err, logb.String())
	}
	return s, nil
}

// waitFTP waits until addr:21 answers with a 220 banner, from inside the server's namespace.
func (l *Lab) waitFTP(ctx context.Context, r Role, addr netip.Addr, p *Proc) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	target := netip.AddrPortFrom(addr, 21).String()
	for {
		var banner string
		err := l.Do(r, func() error {
			c, err := net.DialTimeout("tcp", target, time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			b := make([]byte, 256)
			n, err := c.Read(b)
			banner = string(b[:n])
			if err != nil {
				return err
			}
			_, _ = c.Write([]byte("QUIT\r\n"))
			return nil
		})
		if err == nil && strings.HasPrefix(banner, "220") {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("unexpected banner %q", banner)
		}
		select {
		case <-p.Done():
			return fmt.Errorf("exited: %v", p.Err())
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
