/**
 * A minimal protobuf (proto2) encoder for the subset of onnx.proto dsr writes: ModelProto, GraphProto,
 * NodeProto, AttributeProto, TensorProto (inline raw_data or external data), ValueInfoProto and
 * OperatorSetIdProto. Field numbers are from onnx/onnx.in.proto (facts/quant-and-cpu.md §4.7).
 *
 * Why hand-written: there is no maintained JavaScript ONNX writer (onnx-proto on npm is an unmaintained
 * generated bundle of an old onnx.proto; protobufjs would need the .proto vendored and adds a
 * dependency for ~150 lines of varint/length-delimited encoding). The model file itself is small —
 * every large tensor lives in the external data file — so building it in memory is fine.
 */

/** Growable byte buffer with protobuf wire-format helpers. */
export class PbWriter {
  private buf = new Uint8Array(256);
  private len = 0;

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  private rawVarint(v: bigint | number): void {
    let x = BigInt.asUintN(64, BigInt(v));
    this.ensure(10);
    while (x >= 0x80n) {
      this.buf[this.len++] = Number(x & 0x7fn) | 0x80;
      x >>= 7n;
    }
    this.buf[this.len++] = Number(x);
  }

  private tag(field: number, wire: number): void {
    this.rawVarint((field << 3) | wire);
  }

  /** int32/int64/enum/bool field (negative values take 10 bytes, two's complement, as protobuf requires). */
  varint(field: number, v: number | bigint): this {
    this.tag(field, 0);
    this.rawVarint(v);
    return this;
  }

  float(field: number, v: number): this {
    this.tag(field, 5);
    this.ensure(4);
    new DataView(this.buf.buffer).setFloat32(this.len, v, true);
    this.len += 4;
    return this;
  }

  bytes(field: number, b: Uint8Array): this {
    this.tag(field, 2);
    this.rawVarint(b.byteLength);
    this.ensure(b.byteLength);
    this.buf.set(b, this.len);
    this.len += b.byteLength;
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  message(field: number, build: (w: PbWriter) => void): this {
    const inner = new PbWriter();
    build(inner);
    return this.bytes(field, inner.finish());
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}
