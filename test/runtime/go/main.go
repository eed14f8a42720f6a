// The Go side of test/runtime/go.test.ts, standard library only (built
// offline by every toolchain the offsets table covers).
//
//	client URL N         N concurrent requests (goroutines) POST URL; the body and an
//	                     X-Token header carry $KLOAK_TEST_TOKEN (a placeholder under kloak)
//	server CERT KEY LOG  TLS server (HTTP/1.1 and h2), appends each request it got to LOG
//	bigwrite ADDR MB     one tls.Conn.Write of MB megabytes starting with the token, while
//	                     busy goroutines compete for GOMAXPROCS: the write parks on a full
//	                     socket and its goroutine resumes on other threads mid-call
//	layout               struct offsets of this toolchain, as JSON (scripts/go-offsets.ts)
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

func main() {
	switch os.Args[1] {
	case "client":
		client(os.Args[2], os.Args[3])
	case "server":
		server(os.Args[2], os.Args[3], os.Args[4])
	case "layout":
		layout()
	case "bigwrite":
		bigwrite(os.Args[2], os.Args[3])
	}
}

func client(url, n string) {
	count, _ := strconv.Atoi(n)
	token := os.Getenv("KLOAK_TEST_TOKEN")
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(os.Getenv("KLOAK_TEST_CA"))
	if err != nil {
		panic(err)
	}
	pool.AppendCertsFromPEM(ca)
	h2 := os.Getenv("KLOAK_TEST_H2") == "1"
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	// Several connections (HTTP/1.1) or streams (h2) written from many goroutines at once.
	c := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	protos := map[string]int{}
	for i := 0; i < count; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := bytes.Repeat([]byte("pad-"+strconv.Itoa(i)+"-"), 1+i%7)
			body = append(body, []byte("token="+token+"\n")...)
			req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
			// Over h2 the header is HPACK-coded (Go's encoder Huffman-codes it when shorter).
			req.Header.Set("X-Token", token)
			resp, err := c.Do(req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				fmt.Fprintln(os.Stderr, "request:", err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			protos[resp.Proto]++
			runtime.Gosched()
		}(i)
	}
	wg.Wait()
	// What the process holds after its writes: the test asserts it is the placeholder.
	held := strings.Count(token, "kloak:")
	fmt.Printf("done failed=%d protos=%v held_placeholders=%d token_len=%d\n", failed, protos, held, len(token))
	fmt.Printf("token=%s\n", token)
	if failed > 0 {
		os.Exit(1)
	}
}

func server(cert, key, log string) {
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		panic(err)
	}
	var mu sync.Mutex
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		fmt.Fprintf(f, "=== %s %s %s\n", r.Proto, r.Method, r.URL.Path)
		r.Header.Write(f)
		f.Write(body)
		f.Write([]byte("\n"))
		mu.Unlock()
		w.Write([]byte("ok\n"))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("listening %d\n", ln.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	srv := &http.Server{Handler: h}
	panic(srv.ServeTLS(ln, cert, key))
}

func offset(t reflect.Type, path ...string) uintptr {
	var off uintptr
	for _, name := range path {
		for t.Kind() == reflect.Ptr {
			t = t.Elem()
		}
		f, ok := t.FieldByName(name)
		if !ok {
			panic(t.String() + " has no field " + name)
		}
		off += f.Offset
		t = f.Type
	}
	return off
}

// The fields kloak's eBPF program reads, found by reflect on this very
// toolchain's types (unexported fields included).
func layout() {
	conn := reflect.TypeOf(tls.Conn{})
	out := map[string]interface{}{
		"version":          runtime.Version(),
		"tlsConnConn":      offset(conn, "conn"),
		"tlsConnConfig":    offset(conn, "config"),
		"configServerName": offset(reflect.TypeOf(tls.Config{}), "ServerName"),
		"tcpConnFd":        offset(reflect.TypeOf(net.TCPConn{}), "conn", "fd"),
	}
	fd := reflect.TypeOf(net.TCPConn{})
	f, _ := fd.FieldByName("conn")
	g, _ := f.Type.FieldByName("fd")
	netFD := g.Type.Elem()
	out["netFdSysfd"] = offset(netFD, "pfd", "Sysfd")
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}

func bigwrite(addr, mb string) {
	n, _ := strconv.Atoi(mb)
	token := os.Getenv("KLOAK_TEST_TOKEN")
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(os.Getenv("KLOAK_TEST_CA"))
	if err != nil {
		panic(err)
	}
	pool.AppendCertsFromPEM(ca)
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		panic(err)
	}
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		go func() {
			x := 0
			for {
				select {
				case <-stop:
					return
				default:
					x++
				}
			}
		}()
	}
	buf := make([]byte, n<<20)
	for i := range buf {
		buf[i] = 'a' + byte(i%26)
	}
	copy(buf, "token="+token+"\n")
	before := syscall.Gettid()
	if _, err := c.Write(buf); err != nil {
		panic(err)
	}
	after := syscall.Gettid()
	close(stop)
	c.Close()
	restored := strings.HasPrefix(string(buf), "token="+token+"\n") && strings.HasPrefix(token, "kloak:")
	fmt.Printf("bigwrite migrated=%v restored=%v\n", before != after, restored)
}
