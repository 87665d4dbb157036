/**
 * The two tiny Python pickles the ModelScope SDK keeps in a model folder (facts §2): `.msc`, a list of
 * {Path, Revision} dicts, and `.mdl`, {"id": "owner/name"}. Hand-written protocol-2 opcodes because
 * only lists, dicts and str are needed and no pickle library is worth a dependency for that.
 */
type Value = string | Value[] | { [k: string]: Value };

function encode(v: Value, out: Buffer[]): void {
  if (typeof v === "string") {
    const s = Buffer.from(v, "utf8");
    const len = Buffer.alloc(4);
    len.writeUInt32LE(s.byteLength);
    out.push(Buffer.from("X"), len, s); // BINUNICODE
  } else if (Array.isArray(v)) {
    out.push(Buffer.from("](")); // EMPTY_LIST, MARK
    for (const x of v) encode(x, out);
    out.push(Buffer.from("e")); // APPENDS
  } else {
    out.push(Buffer.from("}(")); // EMPTY_DICT, MARK
    for (const [k, x] of Object.entries(v)) {
      encode(k, out);
      encode(x, out);
    }
    out.push(Buffer.from("u")); // SETITEMS
  }
}

export function pickle(v: Value): Buffer {
  const out: Buffer[] = [Buffer.from([0x80, 0x02])]; // PROTO 2
  encode(v, out);
  out.push(Buffer.from(".")); // STOP
  return Buffer.concat(out);
}
