/** ONNX model description → ModelProto bytes (through the hand-written encoder in proto.ts). */
import { PbWriter } from "./proto.js";

/** TensorProto.DataType codes used by dsr. */
export const DataType = { FLOAT: 1, UINT8: 2, INT8: 3, INT32: 6, INT64: 7, FLOAT16: 10 } as const;
export type DataTypeCode = (typeof DataType)[keyof typeof DataType];

export interface ExternalRef {
  location: string;
  offset: number;
  length: number;
}

export interface TensorSpec {
  name: string;
  dataType: DataTypeCode;
  dims: number[];
  /** Inline little-endian bytes, or a reference into the external data file. */
  raw?: Uint8Array;
  external?: ExternalRef;
}

export type Attr =
  | { kind: "int"; v: number }
  | { kind: "float"; v: number }
  | { kind: "string"; v: string }
  | { kind: "ints"; v: number[] }
  | { kind: "tensor"; v: TensorSpec };

export const attr = {
  int: (v: number): Attr => ({ kind: "int", v }),
  float: (v: number): Attr => ({ kind: "float", v }),
  string: (v: string): Attr => ({ kind: "string", v }),
  ints: (v: number[]): Attr => ({ kind: "ints", v }),
  tensor: (v: TensorSpec): Attr => ({ kind: "tensor", v }),
};

export interface NodeSpec {
  op: string;
  name: string;
  inputs: string[];
  outputs: string[];
  domain?: string;
  attrs?: Record<string, Attr>;
}

export interface ValueInfo {
  name: string;
  elemType: DataTypeCode;
  /** Fixed sizes or symbolic dimension names. */
  shape: (number | string)[];
}

export interface GraphSpec {
  name: string;
  nodes: NodeSpec[];
  initializers: TensorSpec[];
  inputs: ValueInfo[];
  outputs: ValueInfo[];
}

export interface ModelSpec {
  graph: GraphSpec;
  opsets: { domain: string; version: number }[];
  /** Pinned: ORT 1.30 accepts 10 (facts §4.7: older builds cap the IR version). */
  irVersion?: number;
  producerName?: string;
  producerVersion?: string;
  metadata?: Record<string, string>;
}

function writeTensor(w: PbWriter, t: TensorSpec): void {
  for (const d of t.dims) w.varint(1, d);
  w.varint(2, t.dataType);
  w.string(8, t.name);
  if (t.external) {
    const entries: [string, string][] = [
      ["location", t.external.location],
      ["offset", String(t.external.offset)],
      ["length", String(t.external.length)],
    ];
    for (const [k, v] of entries) w.message(13, (e) => e.string(1, k).string(2, v));
    w.varint(14, 1);
  } else {
    w.bytes(9, t.raw ?? new Uint8Array(0));
  }
}

const ATTR_TYPE = { float: 1, int: 2, string: 3, tensor: 4, ints: 7 } as const;

function writeAttr(w: PbWriter, name: string, a: Attr): void {
  w.string(1, name);
  switch (a.kind) {
    case "float":
      w.float(2, a.v);
      break;
    case "int":
      w.varint(3, a.v);
      break;
    case "string":
      w.string(4, a.v);
      break;
    case "tensor":
      w.message(5, (t) => writeTensor(t, a.v));
      break;
    case "ints":
      for (const x of a.v) w.varint(8, x);
      break;
  }
  w.varint(20, ATTR_TYPE[a.kind]);
}

function writeValueInfo(w: PbWriter, v: ValueInfo): void {
  w.string(1, v.name);
  w.message(2, (type) =>
    type.message(1, (tt) => {
      tt.varint(1, v.elemType);
      tt.message(2, (shape) => {
        for (const d of v.shape) shape.message(1, (dim) => (typeof d === "number" ? dim.varint(1, d) : dim.string(2, d)));
      });
    }),
  );
}

export function encodeModel(m: ModelSpec): Uint8Array {
  const w = new PbWriter();
  w.varint(1, m.irVersion ?? 10);
  w.string(2, m.producerName ?? "dsr");
  if (m.producerVersion) w.string(3, m.producerVersion);
  w.message(7, (g) => {
    for (const n of m.graph.nodes) {
      g.message(1, (nw) => {
        for (const i of n.inputs) nw.string(1, i);
        for (const o of n.outputs) nw.string(2, o);
        nw.string(3, n.name);
        nw.string(4, n.op);
        for (const [k, a] of Object.entries(n.attrs ?? {})) nw.message(5, (aw) => writeAttr(aw, k, a));
        if (n.domain) nw.string(7, n.domain);
      });
    }
    g.string(2, m.graph.name);
    for (const t of m.graph.initializers) g.message(5, (tw) => writeTensor(tw, t));
    for (const v of m.graph.inputs) g.message(11, (vw) => writeValueInfo(vw, v));
    for (const v of m.graph.outputs) g.message(12, (vw) => writeValueInfo(vw, v));
  });
  for (const o of m.opsets) w.message(8, (ow) => ow.string(1, o.domain).varint(2, o.version));
  for (const [k, v] of Object.entries(m.metadata ?? {})) w.message(14, (e) => e.string(1, k).string(2, v));
  return w.finish();
}
