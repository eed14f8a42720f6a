/** What a brand-new TLS connection to a local server is served. */
import * as tls from "node:tls";

/** SHA-256 fingerprint (lowercase hex) of the certificate served to a new connection for `localhost`. */
export function peerFingerprint(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: "127.0.0.1", port, servername: "localhost", ca }, () => {
      const fp = sock.getPeerCertificate().fingerprint256.replaceAll(":", "").toLowerCase();
      sock.end();
      resolve(fp);
    });
    sock.on("error", reject);
  });
}
