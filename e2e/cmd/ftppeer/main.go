// Command ftppeer is the Go FTP peer of the e2e lab, run as its own process inside a lab
// namespace (the libraries open sockets from goroutines of their own, and a socket belongs to
// the namespace of the thread that creates it, so they cannot share the test process).
//
//	ftppeer serve  -listen ADDR:21 -root DIR [-public-host IP] [-no-ip-check]
//	ftppeer client -server HOST:21 -op get|put|list|nlst -local FILE -remote PATH [-active] [-disable-epsv]
//
// The server is github.com/fclairamb/ftpserverlib on a directory (anonymous, any password);
// the client is github.com/secsy/goftp (Config.ActiveTransfers for PORT/EPRT).
package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	ftpserver "github.com/fclairamb/ftpserverlib"
	"github.com/secsy/goftp"
	"github.com/spf13/afero"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ftppeer serve|client [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ftppeer:", err)
		os.Exit(1)
	}
}

type driver struct {
	settings *ftpserver.Settings
	fs       afero.Fs
}

func (d *driver) GetSettings() (*ftpserver.Settings, error) { return d.settings, nil }
func (d *driver) ClientConnected(ftpserver.ClientContext) (string, error) {
	return "ftppeer ready", nil
}
func (d *driver) ClientDisconnected(ftpserver.ClientContext) {}
func (d *driver) AuthUser(_ ftpserver.ClientContext, _, _ string) (ftpserver.ClientDriver, error) {
	return d.fs, nil
}
func (d *driver) GetTLSConfig() (*tls.Config, error) { return nil, errors.New("no tls") }

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "", "listen address (addr:port)")
	root := fs.String("root", "", "root directory")
	public := fs.String("public-host", "", "address announced in 227 replies")
	noCheck := fs.Bool("no-ip-check", false, "accept data connections and PORT targets other than the control peer (FXP)")
	_ = fs.Parse(args)
	if *listen == "" || *root == "" {
		return errors.New("serve needs -listen and -root")
	}
	s := &ftpserver.Settings{
		ListenAddr:              *listen,
		PublicHost:              *public,
		ActiveTransferPortNon20: true,
		ConnectionTimeout:       20,
		IdleTimeout:             60,
		DisableMLSD:             false,
	}
	if *noCheck {
		s.ActiveConnectionsCheck = ftpserver.IPMatchDisabled
		s.PasvConnectionsCheck = ftpserver.IPMatchDisabled
	}
	srv := ftpserver.NewFtpServer(&driver{settings: s, fs: afero.NewBasePathFs(afero.NewOsFs(), *root)})
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-ch
		_ = srv.Stop()
	}()
	if err := srv.ListenAndServe(); err != nil && !strings.Contains(err.Error(), "closed") {
		return fmt.Errorf("serve %s: %w", *listen, err)
	}
	return nil
}

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	server := fs.String("server", "", "server host:port")
	op := fs.String("op", "get", "get, put, list or nlst")
	local := fs.String("local", "", "local file")
	remote := fs.String("remote", "", "remote path")
	active := fs.Bool("active", false, "active mode (PORT, or EPRT over IPv6)")
	noEPSV := fs.Bool("disable-epsv", false, "PASV instead of EPSV")
	timeout := fs.Duration("timeout", 10*time.Second, "timeout per operation")
	_ = fs.Parse(args)
	cfg := goftp.Config{
		User:               "anonymous",
		Password:           "ftppeer@",
		ConnectionsPerHost: 1,
		Timeout:            *timeout,
		ActiveTransfers:    *active,
		DisableEPSV:        *noEPSV,
	}
	if os.Getenv("FTPPEER_DEBUG") != "" {
		cfg.Logger = os.Stderr
	}
	c, err := goftp.DialConfig(cfg, *server)
	if err != nil {
		return fmt.Errorf("dial %s: %w", *server, err)
	}
	defer c.Close()
	switch *op {
	case "get":
		f, err := os.Create(*local)
		if err != nil {
			return err
		}
		if err := c.Retrieve(*remote, f); err != nil {
			f.Close()
			return fmt.Errorf("retrieve %s: %w", *remote, err)
		}
		return f.Close()
	case "put":
		f, err := os.Open(*local)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := c.Store(*remote, f); err != nil {
			return fmt.Errorf("store %s: %w", *remote, err)
		}
		return nil
	case "list", "nlst":
		// goftp has no raw NLST; ReadDir issues MLSD or LIST over a data connection.
		fis, err := c.ReadDir(*remote)
		if err != nil {
			return fmt.Errorf("list %s: %w", *remote, err)
		}
		var b bytes.Buffer
		for _, fi := range fis {
			fmt.Fprintf(&b, "%s %d\n", fi.Name(), fi.Size())
		}
		return os.WriteFile(*local, b.Bytes(), 0o644)
	}
	return fmt.Errorf("unknown op %q", *op)
}
