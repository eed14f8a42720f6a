// A TLS client on Java's own TLS stack (JSSE), which kloak has no probes in:
// the test of kloak's report of unhookable TLS. Sends one HTTP/1.1 POST with
// the placeholder from $API_TOKEN in a header and the body, prints the status
// line. Usage: java JavaTlsClient.java HOST PORT CA.pem
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import javax.net.ssl.*;

public class JavaTlsClient {
  public static void main(String[] a) throws Exception {
    KeyStore ks = KeyStore.getInstance(KeyStore.getDefaultType());
    ks.load(null, null);
    try (InputStream in = new FileInputStream(a[2])) {
      ks.setCertificateEntry("ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
    }
    TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
    tmf.init(ks);
    SSLContext ctx = SSLContext.getInstance("TLS");
    ctx.init(null, tmf.getTrustManagers(), null);
    String tok = System.getenv("API_TOKEN");
    String body = "token=" + tok + "&x=1";
    try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket(a[0], Integer.parseInt(a[1]))) {
      OutputStream out = s.getOutputStream();
      out.write(("POST /api HTTP/1.1\r\nHost: " + a[0] + "\r\nAuthorization: Bearer " + tok +
          "\r\nContent-Length: " + body.length() + "\r\nConnection: close\r\n\r\n" + body).getBytes(StandardCharsets.ISO_8859_1));
      out.flush();
      System.out.println(new BufferedReader(new InputStreamReader(s.getInputStream())).readLine());
    }
  }
}
