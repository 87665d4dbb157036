/**
 * The JSON Schema subset the embedded and torch engines enforce (`response_format: json_schema`), compiled
 * into the graph json-constraint.ts walks byte by byte.
 *
 * Subset: `type` (a name or a list), `properties`, `required`, `additionalProperties` (boolean or a
 * schema), `items` (one schema), `minItems` / `maxItems`, `enum` / `const` of scalars, `anyOf`, `$ref`
 * to `#`, `#/$defs/NAME` or `#/definitions/NAME` (recursion included), boolean schemas; the
 * annotations `description`, `title`, `default`, `examples`, `$comment`, `$schema` are ignored.
 * Anything else is refused up front with the JSON path of the keyword (SchemaError), so a schema is
 * never half enforced.
 *
 * A compiled node is a union of branches: at most one scalar branch (strings, numbers and literals
 * merged: a scalar needs no stack, so a union of scalars is one automaton) and any number of object
 * and array branches (anyOf of objects stays a set that the recogniser narrows as keys arrive).
 * Branches that admit no finite value (a required property whose schema is empty, minItems >
 * maxItems, a recursion with no way out) are removed up front (a least fixpoint), so every prefix the
 * recogniser accepts can still be completed: constrained decoding never reaches a dead end.
 */

/** A schema outside the subset (`unsupported`) or malformed / admitting no value; `path` is the keyword's JSON path. */
export class SchemaError extends Error {
  constructor(readonly path: string, message: string, readonly unsupported = false) {
    super(message);
  }
}

const ANNOTATIONS = ["description", "title", "default", "examples", "$comment", "$schema"];
const CONSTRAINING = ["type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum", "const", "anyOf", "$ref"];
/** Where `$ref` may point; read only from the root. */
const DEFS = ["$defs", "definitions"];
const SUPPORTED = new Set([...CONSTRAINING, ...DEFS, ...ANNOTATIONS]);
const TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"];
export const SUPPORTED_KEYWORDS = [...CONSTRAINING, ...DEFS];
// Bounds on what a request can make the gateway compile (merging anyOf is quadratic in the worst case).
const MAX_DEPTH = 64;
const MAX_NODES = 4096;

/** A byte trie (keys or literal spellings). Node 0 is the root; `term[n]` ≥ 0 marks an end (the payload). */
export class ByteTrie {
  readonly next: Map<number, number>[] = [new Map()];
  readonly term: number[] = [-1];

  add(bytes: Uint8Array, payload: number): void {
    let n = 0;
    for (const b of bytes) {
      let c = this.next[n]!.get(b);
      if (c === undefined) {
        c = this.next.length;
        this.next.push(new Map());
        this.term.push(-1);
        this.next[n]!.set(b, c);
      }
      n = c;
    }
    this.term[n] = payload;
  }

  /** The child of `n` by byte `b`, or -1. */
  step(n: number, b: number): number {
    return this.next[n]!.get(b) ?? -1;
  }
}

/** Strings, numbers, booleans and null: free forms plus literal spellings (enum / const, true / false / null). */
export interface ScalarBranch {
  id: number;
  /** Any string. */
  str: boolean;
  /** 0: no free number; 1: integers (digits only, optional minus); 2: any JSON number. */
  num: 0 | 1 | 2;
  /** Literal spellings (JSON.stringify's), quotes included for strings; null when none. */
  lit: ByteTrie | null;
}

export interface ObjectBranch {
  id: number;
  /** Declared property names as their JSON spelling between the quotes (bytes, as latin1 strings). */
  names: string[];
  propNode: number[];
  /** Trie of the names' bytes; term = property index. */
  trie: ByteTrie;
  /** Per trie node: the properties whose names pass through it (bitset words). */
  under: Uint32Array[];
  /** Bitset words of the required properties. */
  required: Uint32Array;
  /** Bitset words of properties that can never appear (their schema admits no value): start seen. */
  forbidden: Uint32Array;
  /** Node of undeclared keys' values; -1: undeclared keys are not allowed. */
  additional: number;
}

export interface ArrayBranch {
  id: number;
  items: number;
  min: number;
  max: number;
}

export interface SchemaNode {
  scalar: ScalarBranch | null;
  objs: ObjectBranch[];
  arrs: ArrayBranch[];
}

export interface CompiledSchema {
  nodes: SchemaNode[];
  root: number;
}

interface Raw {
  /** Own branches (from type/enum/...); scalars merged. */
  scalar: { str: boolean; num: 0 | 1 | 2; lits: Set<string> } | null;
  objs: RawObject[];
  arrs: ArrayBranch[];
  /** anyOf alternatives / the $ref target, merged in after compiling (they may still be in progress). */
  includes: number[];
}
interface RawObject {
  id: number;
  names: string[];
  propNode: number[];
  required: number[];
  additional: number;
  /** A required name with no declared schema and no additional properties. */
  impossible: boolean;
}

const plain = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isScalar = (v: unknown) => v === null || typeof v === "string" || typeof v === "boolean" || (typeof v === "number" && Number.isFinite(v));
const latin1 = (s: string) => Buffer.from(s, "utf8").toString("latin1");
const seg = (k: string) => (/^[A-Za-z_$][\w$]*$/.test(k) ? `.${k}` : `[${JSON.stringify(k)}]`);
const INT_SPELLING = /^-?(0|[1-9][0-9]*)$/;

/**
 * Validates `schema` against the subset and compiles it. `path` names the schema in errors
 * (e.g. "response_format.json_schema.schema").
 */
export function compileJsonSchema(schema: unknown, path = "schema"): CompiledSchema {
  const raws: Raw[] = [];
  const refs = new Map<string, number>();
  let branchIds = 0;
  let anyNode = -1;
  const newNode = () => {
    if (raws.length >= MAX_NODES) throw new SchemaError(path, `${path} has more than ${MAX_NODES} subschemas`);
    return raws.push({ scalar: null, objs: [], arrs: [], includes: [] }) - 1;
  };
  const unsupported = (at: string) =>
    new SchemaError(at, `${at} is not supported by the embedded and torch engines (supported: ${SUPPORTED_KEYWORDS.join(", ")}; ignored: ${ANNOTATIONS.join(", ")}); use --engine vllm or --upstream`, true);

  /** The node of `true`: any JSON value (objects with any keys, arrays of anything). */
  const any = (): number => {
    if (anyNode >= 0) return anyNode;
    anyNode = newNode();
    const r = raws[anyNode]!;
    r.scalar = { str: true, num: 2, lits: new Set(["true", "false", "null"]) };
    r.objs.push({ id: branchIds++, names: [], propNode: [], required: [], additional: anyNode, impossible: false });
    r.arrs.push({ id: branchIds++, items: anyNode, min: 0, max: Infinity });
    return anyNode;
  };

  const build = (s: unknown, at: string): number => {
    if (s === true) return any();
    const id = newNode();
    if (s !== false) fill(id, s, at);
    return id;
  };

  const ref = (target: string, at: string): number => {
    let id = refs.get(target);
    if (id !== undefined) return id;
    let def: unknown = schema;
    let defPath = path;
    if (target !== "#") {
      const m = /^#\/(\$defs|definitions)\/([^/]+)$/.exec(target);
      if (!m) throw new SchemaError(at, `${at} ${JSON.stringify(target)} is not supported by the embedded and torch engines (only "#", "#/$defs/NAME" and "#/definitions/NAME"); use --engine vllm or --upstream`, true);
      let name = m[2]!;
      try {
        name = decodeURIComponent(name);
      } catch {
        /* not %-encoded */
      }
      name = name.replace(/~1/g, "/").replace(/~0/g, "~");
      const defs = plain(schema) ? schema[m[1]!] : undefined;
      if (!plain(defs) || !Object.hasOwn(defs, name)) throw new SchemaError(at, `${at} ${JSON.stringify(target)} points to nothing in the schema`);
      def = defs[name];
      defPath = `${path}${seg(m[1]!)}${seg(name)}`;
    }
    if (def === true) id = any();
    else {
      id = newNode();
      refs.set(target, id); // before filling: a recursive reference finds it
      if (def !== false) fill(id, def, defPath);
    }
    refs.set(target, id);
    return id;
  };

  let depth = 0;
  const fill = (id: number, s: unknown, at: string): void => {
    if (++depth > MAX_DEPTH) throw new SchemaError(at, `${at} is nested more than ${MAX_DEPTH} schemas deep`);
    try {
      fillNode(id, s, at);
    } finally {
      depth--;
    }
  };
  const fillNode = (id: number, s: unknown, at: string): void => {
    if (!plain(s)) throw new SchemaError(at, `${at} must be a JSON Schema (an object or a boolean)`);
    for (const k of Object.keys(s)) if (!SUPPORTED.has(k)) throw unsupported(`${at}${seg(k)}`);
    const r = raws[id]!;
    const has = (k: string) => Object.hasOwn(s, k) && s[k] !== undefined;
    // anyOf and $ref replace the schema; other constraints beside them would mean an intersection.
    for (const alone of ["$ref", "anyOf"]) {
      if (!has(alone)) continue;
      const other = CONSTRAINING.find((k) => k !== alone && has(k));
      if (other) throw new SchemaError(`${at}${seg(other)}`, `${at}${seg(other)} beside ${alone} is not supported by the embedded and torch engines; move it into ${alone === "anyOf" ? "each alternative" : "the referenced schema"}, or use --engine vllm or --upstream`, true);
    }
    if (has("$ref")) {
      if (typeof s.$ref !== "string") throw new SchemaError(`${at}.$ref`, `${at}.$ref must be a string`);
      r.includes.push(ref(s.$ref, `${at}.$ref`));
      return;
    }
    if (has("anyOf")) {
      const alts = s.anyOf;
      if (!Array.isArray(alts) || alts.length === 0) throw new SchemaError(`${at}.anyOf`, `${at}.anyOf must be a non-empty array of schemas`);
      alts.forEach((a, i) => r.includes.push(build(a, `${at}.anyOf[${i}]`)));
      return;
    }

    let types = new Set(TYPES);
    if (has("type")) {
      const t = s.type;
      const list = typeof t === "string" ? [t] : Array.isArray(t) ? t : null;
      if (!list || list.length === 0 || list.some((x) => typeof x !== "string" || !TYPES.includes(x))) {
        throw new SchemaError(`${at}.type`, `${at}.type must be one of ${TYPES.join(", ")} or a list of them`);
      }
      types = new Set(list as string[]);
    }
    const count = (k: string): number | undefined => {
      if (!has(k)) return undefined;
      const v = s[k];
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw new SchemaError(`${at}.${k}`, `${at}.${k} must be a non-negative integer`);
      return v;
    };
    const min = count("minItems") ?? 0;
    const max = count("maxItems") ?? Infinity;

    if (has("enum") || has("const")) {
      // Scalars only, spelled as JSON.stringify spells them.
      let values: unknown[] | undefined;
      if (has("enum")) {
        if (!Array.isArray(s.enum) || s.enum.length === 0) throw new SchemaError(`${at}.enum`, `${at}.enum must be a non-empty array`);
        s.enum.forEach((v, i) => {
          if (!isScalar(v)) throw new SchemaError(`${at}.enum[${i}]`, `${at}.enum[${i}]: only strings, numbers, booleans and null are supported in enum by the embedded and torch engines; use --engine vllm or --upstream`, true);
        });
        values = s.enum;
      }
      if (has("const")) {
        if (!isScalar(s.const)) throw new SchemaError(`${at}.const`, `${at}.const: only a string, number, boolean or null is supported by the embedded and torch engines; use --engine vllm or --upstream`, true);
        const c = JSON.stringify(s.const);
        values = (values ?? [s.const]).filter((v) => JSON.stringify(v) === c);
      }
      const typeOf = (v: unknown) => (v === null ? "null" : typeof v === "number" ? (Number.isInteger(v) ? "integer" : "number") : typeof v);
      const ok = (v: unknown) => types.has(typeOf(v)) || (typeOf(v) === "integer" && types.has("number"));
      r.scalar = { str: false, num: 0, lits: new Set(values!.filter(ok).map((v) => JSON.stringify(v))) };
      // (object/array keywords beside enum constrain nothing: the value is a scalar.)
      checkObjectKeywords(s, at, has);
      return;
    }

    if (types.has("string") || types.has("number") || types.has("integer") || types.has("boolean") || types.has("null")) {
      const lits = new Set<string>();
      if (types.has("boolean")) lits.add("true").add("false");
      if (types.has("null")) lits.add("null");
      r.scalar = { str: types.has("string"), num: types.has("number") ? 2 : types.has("integer") ? 1 : 0, lits };
    }
    const o = checkObjectKeywords(s, at, has);
    if (types.has("object")) {
      const names: string[] = [];
      const propNode: number[] = [];
      const index = new Map<string, number>();
      if (o.properties) {
        for (const [name, sub] of Object.entries(o.properties)) {
          index.set(name, names.length);
          names.push(latin1(JSON.stringify(name).slice(1, -1)));
          propNode.push(build(sub, `${at}.properties${seg(name)}`));
        }
      }
      const additional = o.additional === undefined || o.additional === true ? any() : o.additional === false ? -1 : build(o.additional, `${at}.additionalProperties`);
      let impossible = false;
      const required: number[] = [];
      for (const name of new Set(o.required ?? [])) {
        let p = index.get(name);
        if (p === undefined) {
          // A required key with no declared schema takes additionalProperties' schema.
          if (additional < 0) impossible = true;
          else {
            p = names.length;
            index.set(name, p);
            names.push(latin1(JSON.stringify(name).slice(1, -1)));
            propNode.push(additional);
          }
        }
        if (p !== undefined) required.push(p);
      }
      r.objs.push({ id: branchIds++, names, propNode, required, additional, impossible });
    }
    if (types.has("array")) {
      if (Array.isArray(s.items)) throw new SchemaError(`${at}.items`, `${at}.items as a list (tuple validation) is not supported by the embedded and torch engines; use --engine vllm or --upstream`, true);
      const items = has("items") ? build(s.items, `${at}.items`) : any();
      r.arrs.push({ id: branchIds++, items, min, max });
    }
  };

  /** Checks the object keywords' shapes (whatever the type, so a mistake is reported even when unused). */
  const checkObjectKeywords = (s: Record<string, unknown>, at: string, has: (k: string) => boolean) => {
    const out: { properties?: Record<string, unknown>; required?: string[]; additional?: unknown } = {};
    if (has("properties")) {
      if (!plain(s.properties)) throw new SchemaError(`${at}.properties`, `${at}.properties must be an object of schemas`);
      out.properties = s.properties;
    }
    if (has("required")) {
      const q = s.required;
      if (!Array.isArray(q) || q.some((x) => typeof x !== "string")) throw new SchemaError(`${at}.required`, `${at}.required must be an array of strings`);
      out.required = q as string[];
    }
    if (has("additionalProperties")) {
      const a = s.additionalProperties;
      if (typeof a !== "boolean" && !plain(a)) throw new SchemaError(`${at}.additionalProperties`, `${at}.additionalProperties must be a boolean or a schema`);
      out.additional = a;
    }
    return out;
  };

  const root = build(schema, path);
  return finish(raws, root, path);
}

/** Merges includes, removes branches that admit no value, builds the tries. */
function finish(raws: Raw[], root: number, path: string): CompiledSchema {
  // Each node's branches: its own plus those of everything it includes (anyOf / $ref), transitively.
  const merged: Raw[] = raws.map(() => ({ scalar: null, objs: [], arrs: [], includes: [] }));
  raws.forEach((_, id) => {
    const m = merged[id]!;
    const seen = new Set<number>();
    const objs = new Set<RawObject>();
    const arrs = new Set<ArrayBranch>();
    const visit = (n: number) => {
      if (seen.has(n)) return;
      seen.add(n);
      const r = raws[n]!;
      if (r.scalar) {
        const s = (m.scalar ??= { str: false, num: 0, lits: new Set() });
        s.str ||= r.scalar.str;
        s.num = Math.max(s.num, r.scalar.num) as 0 | 1 | 2;
        for (const l of r.scalar.lits) s.lits.add(l);
      }
      r.objs.forEach((o) => objs.add(o));
      r.arrs.forEach((a) => arrs.add(a));
      r.includes.forEach(visit);
    };
    visit(id);
    m.objs = [...objs];
    m.arrs = [...arrs];
  });

  // Least fixpoint of "admits a finite value".
  const ok = new Array<boolean>(raws.length).fill(false);
  const okObj = (o: RawObject) => !o.impossible && o.required.every((p) => ok[o.propNode[p]!]);
  const okArr = (a: ArrayBranch) => a.min <= a.max && (a.min === 0 || ok[a.items]!);
  const okScalar = (s: Raw["scalar"]) => !!s && (s.str || s.num > 0 || s.lits.size > 0);
  for (let changed = true; changed; ) {
    changed = false;
    merged.forEach((m, id) => {
      if (ok[id]) return;
      if (okScalar(m.scalar) || m.objs.some(okObj) || m.arrs.some(okArr)) (ok[id] = true), (changed = true);
    });
  }
  if (!ok[root]) throw new SchemaError(path, `${path} admits no JSON value`);

  let scalarIds = 0;
  const objCache = new Map<RawObject, ObjectBranch>();
  const arrCache = new Map<ArrayBranch, ArrayBranch>();
  const nodes: SchemaNode[] = merged.map((m) => {
    let scalar: ScalarBranch | null = null;
    if (okScalar(m.scalar)) {
      const s = m.scalar!;
      // Literals a free form already covers are dropped (the trie only narrows).
      const lits = [...s.lits].filter((l) => !(s.str && l.startsWith('"')) && !(s.num === 2 && /^[-0-9]/.test(l)) && !(s.num === 1 && INT_SPELLING.test(l)));
      let lit: ByteTrie | null = null;
      if (lits.length) {
        lit = new ByteTrie();
        for (const l of lits) lit.add(Buffer.from(l, "utf8"), 1);
      }
      scalar = { id: scalarIds++, str: s.str, num: s.num, lit };
    }
    const objs = m.objs.filter(okObj).map((o) => {
      let b = objCache.get(o);
      if (!b) objCache.set(o, (b = objectBranch(o, ok)));
      return b;
    });
    const arrs = m.arrs.filter(okArr).map((a) => {
      let b = arrCache.get(a);
      if (!b) arrCache.set(a, (b = { id: a.id, items: a.items, min: a.min, max: ok[a.items] ? a.max : 0 }));
      return b;
    });
    return { scalar, objs, arrs };
  });
  return { nodes, root };
}

function objectBranch(o: RawObject, ok: boolean[]): ObjectBranch {
  const words = Math.max(1, Math.ceil(o.names.length / 32));
  const trie = new ByteTrie();
  const under: Uint32Array[] = [];
  const required = new Uint32Array(words);
  const forbidden = new Uint32Array(words);
  o.names.forEach((name, p) => {
    trie.add(Buffer.from(name, "latin1"), p);
    if (!ok[o.propNode[p]!]) forbidden[p >>> 5]! |= 1 << (p & 31);
  });
  for (let n = 0; n < trie.next.length; n++) under.push(new Uint32Array(words));
  o.names.forEach((name, p) => {
    let n = 0;
    under[0]![p >>> 5]! |= 1 << (p & 31);
    for (const b of Buffer.from(name, "latin1")) {
      n = trie.step(n, b);
      under[n]![p >>> 5]! |= 1 << (p & 31);
    }
  });
  for (const p of o.required) required[p >>> 5]! |= 1 << (p & 31);
  return { id: o.id, names: o.names, propNode: o.propNode, trie, under, required, forbidden, additional: o.additional >= 0 && ok[o.additional] ? o.additional : -1 };
}

/** The schema json_object means: an object with any keys and values. */
export const JSON_OBJECT_SCHEMA = { type: "object" } as const;
