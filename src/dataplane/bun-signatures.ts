/**
 * The Bun versions kloak can protect: per version, the byte patterns of the
 * BoringSSL functions it probes in Bun's stripped executable (x86-64 Linux
 * builds, the @oven/bun-linux-x64 package), and the SSL error reasons each
 * function must raise (the second check, see bun-boringssl.ts).
 *
 * Generated: `bun scripts/bun-signatures.ts --write PATH-TO-BUN` adds or
 * replaces a version (the script header says how functions are found).
 * test/runtime/bun.test.ts checks each covered version it has.
 */
export type BunFunction = "SSL_write" | "SSL_do_handshake" | "SSL_set_tlsext_host_name" | "SSL_new";

export interface BunSignature {
  name: BunFunction;
  /** ERR_put_error reasons from ssl_lib.cc that the function raises */
  reasons: number[];
  /** hex bytes from the function's first byte; ?? for relocated fields */
  pattern: string;
}

export const BUN_SIGNATURES: Record<string, { functions: BunSignature[] }> = {
  // BEGIN SIGNATURES
  "1.2.23": {
    functions: [
      {
        name: "SSL_write",
        reasons: [226,215,111],
        pattern:
          "55 48 89 e5 41 57 41 56 41 55 41 54 53 48 83 ec 18 41 89 d7 49 89 f6 48 89 fb 48 8b 47 30",
      },
      {
        name: "SSL_do_handshake",
        reasons: [134],
        pattern:
          "55 48 89 e5 41 57 41 56 41 55 41 54 53 48 83 ec 28 49 89 fc 48 8b 47 30",
      },
      {
        name: "SSL_set_tlsext_host_name",
        reasons: [213],
        pattern:
          "55 48 89 e5 41 57 41 56 41 54 53 49 89 f6 48 89 fb 48 8b bf 90 00 00 00",
      },
      {
        name: "SSL_new",
        reasons: [185],
        pattern:
          "55 48 89 e5 41 57 41 56 41 55 41 54 53 48 83 ec 18 48 85 ff 74 24 49 89 fe",
      },
    ],
  },
  "1.3.14": {
    functions: [
      {
        name: "SSL_write",
        reasons: [226,215,111],
        pattern:
          "55 48 89 e5 41 57 41 56 41 55 41 54 53 48 83 ec 18 41 89 d7 49 89 f6 48 89 fb 48 8b 47 30",
      },
      {
        name: "SSL_do_handshake",
        reasons: [134],
        pattern:
          "55 48 89 e5 41 57 41 56 41 55 41 54 53 48 83 ec 28 49 89 fc 48 8b 47 30",
      },
      {
        name: "SSL_set_tlsext_host_name",
        reasons: [213],
        pattern:
          "55 48 89 e5 41 57 41 56 41 54 53 49 89 f6 48 89 fb 4c 8b bf 90 00 00 00",
      },
      {
        name: "SSL_new",
        reasons: [],
        pattern:
          "55 48 89 e5 41 57 41 56 41 55 41 54 53 48 83 ec 18 49 89 fe bf a8 00 00 00",
      },
    ],
  },
  "1.4.5": {
    functions: [
      {
        name: "SSL_write",
        reasons: [226,215,111],
        pattern:
          "55 48 89 e5 41 57 41 56 41 55 41 54 53 48 83 ec 18 41 89 d7 49 89 f6 48 89 fb 48 8b 47 30",
      },
      {
        name: "SSL_do_handshake",
        reasons: [134],
        pattern:
          "55 48 89 e5 41 56 53 48 83 ec 10 48 89 fb 48 8b 47 30 c7 80 c4 00 00 00 00 00 00 00",
      },
      {
        name: "SSL_set_tlsext_host_name",
        reasons: [213],
        pattern:
          "55 48 89 e5 41 57 41 56 41 54 53 49 89 f6 48 89 fb 4c 8b bf 90 00 00 00",
      },
      {
        name: "SSL_new",
        reasons: [185],
        pattern:
          "55 48 89 e5 41 57 41 56 41 55 41 54 53 48 83 ec 18 48 85 ff 0f 84 ?? ?? ?? ?? 49 89 fe",
      },
    ],
  },
  // END SIGNATURES
};

/** Versions with signatures, oldest first. */
export const BUN_VERSIONS = Object.keys(BUN_SIGNATURES);
