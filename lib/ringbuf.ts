/**
 * Consumer side of a BPF ring buffer (BPF_MAP_TYPE_RINGBUF), read from mmapped
 * memory without libbpf, so it can run on any thread.
 *
 * Layout (kernel ABI): page 0 is the consumer position (read-write); from
 * page 1 the producer position (read-only) followed by the data area, which
 * the kernel maps twice back to back so a record never wraps.
 *
 * Plain reads only on the read-only mapping: Atomics on it crash Bun once the
 * code is JIT-compiled. x86-64 keeps loads ordered, which is what we need.
 */
import { toArrayBuffer } from "bun:ffi";
import { MAP_SHARED, mmap, munmap, pageSize, PROT_READ, PROT_WRITE } from "./libc.ts";

const BUSY = 0x80000000;
const DISCARD = 0x40000000;
const HEADER = 8;

export class RingBufferReader {
  private readonly consumer: BigUint64Array;
  private readonly producer: BigUint64Array;
  private readonly data: DataView;
  private readonly mask: number;
  private readonly consumerPtr;
  private readonly producerPtr;
  private readonly page = pageSize();

  constructor(
    readonly fd: number,
    readonly size: number,
  ) {
    this.mask = size - 1;
    this.consumerPtr = mmap(this.page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    this.producerPtr = mmap(this.page + 2 * size, PROT_READ, MAP_SHARED, fd, this.page);
    this.consumer = new BigUint64Array(toArrayBuffer(this.consumerPtr, 0, 8));
    this.producer = new BigUint64Array(toArrayBuffer(this.producerPtr, 0, 8));
    this.data = new DataView(toArrayBuffer(this.producerPtr, this.page, 2 * size));
  }

  /** Records waiting (committed or still being written). */
  pending(): boolean {
    return this.producer[0]! !== this.consumer[0]!;
  }

  /**
   * Hand each committed record to onRecord (a view valid only during the
   * call) and release it. Stops at a record still being written. Returns the
   * number of records read.
   */
  drain(onRecord: (record: DataView) => void): number {
    let cons = Number(this.consumer[0]!);
    const prod = Number(this.producer[0]!);
    let n = 0;
    while (cons < prod) {
      const at = cons & this.mask;
      const hdr = this.data.getUint32(at, true);
      if (hdr & BUSY) break;
      const len = hdr & ~(BUSY | DISCARD);
      if (!(hdr & DISCARD)) {
        onRecord(new DataView(this.data.buffer, this.data.byteOffset + at + HEADER, len));
        n++;
      }
      cons += (len + HEADER + 7) & ~7;
      this.consumer[0] = BigInt(cons);
    }
    return n;
  }

  close(): void {
    munmap(this.consumerPtr, this.page);
    munmap(this.producerPtr, this.page + 2 * this.size);
  }
}
