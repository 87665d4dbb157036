/**
 * Test helpers for json_schema: a reference validator of the supported subset (complete documents,
 * written independently of json-schema.ts), a duplicate-key check, and seeded generators of schemas
 * in the subset and of documents that satisfy them (spelled the way the automaton requires: keys and
 * enum values as JSON.stringify spells them, integers without fraction or exponent).
 */
import { seededRandom } from "../../src/engine/runtime/embedded/sampler.js";

type Schema = boolean | Record<string, unknown>;
const plain = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

function resolve(root: Schema, ref: string): Schema {
  if (ref === "#") return root;
  const [, kind, name] = /^#\/(\$defs|definitions)\/(.+)$/.exec(ref)!;
  return ((root as Record<string, Record<string, Schema>>)[kind!]!)[name!.replace(/~1/g, "/").replace(/~0/g, "~")]!;
}

const typeIs = (t: string, v: unknown): boolean =>
  t === "object" ? plain(v) : t === "array" ? Array.isArray(v) : t === "integer" ? Number.isInteger(v) : t === "null" ? v === null : typeof v === t;

/** Whether `v` satisfies `s` (the subset: type, properties, required, additionalProperties, items, min/maxItems, enum, const, anyOf, $ref). */
export function validate(s: Schema, v: unknown, root: Schema = s): boolean {
  if (s === true) return true;
  if (s === false) return false;
  if (typeof s.$ref === "string") return validate(resolve(root, s.$ref), v, root);
  if (Array.isArray(s.anyOf)) return s.anyOf.some((a) => validate(a as Schema, v, root));
  if (s.type !== undefined && !([] as string[]).concat(s.type as string).some((t) => typeIs(t, v))) return false;
  if (Array.isArray(s.enum) && !s.enum.some((e) => e === v)) return false;
  if ("const" in s && s.const !== v) return false;
  if (plain(v)) {
    const props = (s.properties ?? {}) as Record<string, Schema>;
    for (const r of (s.required ?? []) as string[]) if (!Object.hasOwn(v, r)) return false;
    for (const [k, x] of Object.entries(v)) {
      const sub = Object.hasOwn(props, k) ? props[k]! : ((s.additionalProperties ?? true) as Schema);
      if (!validate(sub, x, root)) return false;
    }
  }
  if (Array.isArray(v)) {
    if (typeof s.minItems === "number" && v.length < s.minItems) return false;
    if (typeof s.maxItems === "number" && v.length > s.maxItems) return false;
    if (s.items !== undefined && !v.every((x) => validate(s.items as Schema, x, root))) return false;
  }
  return true;
}

/** True when some object in a JSON text (already known to parse) has a key twice. */
export function hasDuplicateKeys(text: string): boolean {
  let i = 0;
  const ws = () => {
    while (/\s/.test(text[i] ?? "")) i++;
  };
  const str = (): string => {
    const m = /^"(?:[^"\\]|\\.)*"/.exec(text.slice(i))!;
    i += m[0].length;
    return JSON.parse(m[0]) as string;
  };
  const value = (): boolean => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const keys = new Set<string>();
      let dup = false;
      ws();
      if (text[i] === "}") return i++, false;
      for (;;) {
        ws();
        const k = str();
        if (keys.has(k)) dup = true;
        keys.add(k);
        ws();
        i++; // :
        if (value()) dup = true;
        ws();
        if (text[i++] === "}") return dup;
      }
    }
    if (c === "[") {
      i++;
      let dup = false;
      ws();
      if (text[i] === "]") return i++, false;
      for (;;) {
        if (value()) dup = true;
        ws();
        if (text[i++] === "]") return dup;
      }
    }
    if (c === '"') return str(), false;
    i += /^[^,\]}\s]+/.exec(text.slice(i))![0].length;
    return false;
  };
  return value();
}

// ---------- generators ----------

/** Property names: prefixes of each other (trie sharing), non-ASCII, a space, a quote. */
export const NAMES = ["a", "b", "ab", "abc", "é", "x y", 'q"t', "n"];
const EXTRA = ["zz", "k1", "日本", "w"];
const ENUM_VALUES: unknown[] = ["red", "green", "a", "é", 'say "hi"', "", 0, 1, -3, 2.5, 1e21, true, false, null];
const TYPES = ["string", "number", "integer", "boolean", "null"];

/** The spellings a completer may try as whole keys / strings (name + closing quote). */
export const COMPLETIONS = [...NAMES, ...EXTRA, ...ENUM_VALUES.filter((v) => typeof v === "string")].map((n) => JSON.stringify(n).slice(1));

export function schemaGenerator(seed: number) {
  const r = seededRandom(seed);
  const int = (n: number) => Math.floor(r() * n);
  const pick = <T>(xs: readonly T[]) => xs[int(xs.length)]!;
  const some = <T>(xs: readonly T[], k: number) => [...xs].sort(() => r() - 0.5).slice(0, k);
  const annotate = (s: Record<string, unknown>) => (r() < 0.15 ? { ...s, description: "d", title: "t" } : s);
  let defs = false;

  const scalar = (): Record<string, unknown> => {
    if (r() < 0.25) return { type: some(TYPES, 2 + int(2)) };
    return { type: pick(TYPES) };
  };
  const literals = (): Record<string, unknown> => {
    if (r() < 0.3) return { const: pick(ENUM_VALUES) };
    const values = some(ENUM_VALUES, 1 + int(5));
    // A type beside enum filters it; keep at least one value of the type.
    if (r() < 0.3) {
      const v = values[0];
      const t = v === null ? "null" : typeof v === "number" ? (Number.isInteger(v) ? "integer" : "number") : typeof v;
      return { type: t, enum: values };
    }
    return { enum: values };
  };
  const object = (depth: number, names = some(NAMES, 1 + int(4))): Record<string, unknown> => {
    const properties: Record<string, unknown> = {};
    const required: string[] = [];
    for (const n of names) {
      if (r() < 0.08) {
        properties[n] = false; // optional and impossible: the key can never appear
        continue;
      }
      properties[n] = gen(depth + 1);
      if (r() < 0.5) required.push(n);
    }
    const s: Record<string, unknown> = { type: "object", properties, required };
    const k = r();
    if (k < 0.4) s.additionalProperties = false;
    else if (k < 0.55) s.additionalProperties = true;
    else if (k < 0.7) s.additionalProperties = scalar();
    return s;
  };
  const array = (depth: number): Record<string, unknown> => {
    const s: Record<string, unknown> = { type: "array" };
    if (r() < 0.8) s.items = gen(depth + 1);
    const min = int(3);
    if (r() < 0.4) s.minItems = min;
    if (r() < 0.5) s.maxItems = (s.minItems as number | undefined ?? 0) + int(3);
    return s;
  };
  const gen = (depth: number): Schema => {
    const k = r();
    if (depth >= 3 || k < 0.3) return annotate(scalar());
    if (k < 0.42) return literals();
    if (k < 0.62) return annotate(object(depth));
    if (k < 0.77) return array(depth);
    if (k < 0.87) {
      // anyOf, sometimes of objects sharing names (the recogniser narrows by keys)
      const shared = some(NAMES, 3);
      return { anyOf: Array.from({ length: 2 + int(2) }, () => (r() < 0.5 ? object(depth + 1, some(shared, 1 + int(3))) : gen(depth + 1))) };
    }
    if (k < 0.93 && defs) return { $ref: pick(["#/$defs/node", "#/$defs/leaf"]) };
    return r() < 0.5 ? true : {};
  };

  return () => {
    defs = r() < 0.3;
    const body = gen(0);
    if (!defs) return body;
    const node = { type: "object", properties: { v: { type: "integer" }, kids: { type: "array", items: { $ref: "#/$defs/node" }, maxItems: 2 } }, required: ["v"], additionalProperties: false };
    return { ...(typeof body === "boolean" ? { anyOf: [body] } : body), $defs: { node, leaf: literals() } };
  };
}

/** Documents satisfying a schema: varied whitespace, key order and string escapes; seeded. */
export function documentGenerator(seed: number) {
  const r = seededRandom(seed);
  const int = (n: number) => Math.floor(r() * n);
  const pick = <T>(xs: readonly T[]) => xs[int(xs.length)]!;
  const sp = () => (r() < 0.6 ? "" : pick([" ", "\n", "\n  ", "\t", "\r\n    ", "  "]));
  const chars = ["a", "Z", " ", "9", "é", "中", "😀", "\\n", '\\"', "\\\\", "\\/", "\\u00e9", "\\uD83D\\uDE00", "{", "]", ":", ","];
  const str = () => `"${Array.from({ length: int(5) }, () => pick(chars)).join("")}"`;
  const number = () => pick(["0", "-0", "7", "-12", "3.25", "1e5", "-2.5E-3", "10E+2", "0.0"]);
  const integer = () => pick(["0", "7", "-12", "123456789", "-0", "40"]);

  const anyValue = (depth: number): string => {
    const k = r();
    if (depth < 3 && k < 0.15) return obj(depth + 1, {}, [], true);
    if (depth < 3 && k < 0.3) return `[${sp()}${Array.from({ length: int(3) }, () => anyValue(depth + 1)).join(`${sp()},${sp()}`)}${sp()}]`;
    if (k < 0.6) return str();
    if (k < 0.85) return number();
    return pick(["true", "false", "null"]);
  };
  function obj(depth: number, props: Record<string, Schema>, required: string[], additional: Schema, root?: Schema): string {
    const keys = new Set(required);
    if (depth < 4) for (const k of Object.keys(props)) if (props[k] !== false && r() < 0.5) keys.add(k);
    if (additional !== false && depth < 4) for (const k of EXTRA) if (!(k in props) && r() < 0.2) keys.add(k);
    const order = [...keys].sort(() => r() - 0.5);
    const members = order.map((k) => `${JSON.stringify(k)}${sp()}:${sp()}${value(Object.hasOwn(props, k) ? props[k]! : additional, depth + 1, root)}`);
    return `{${sp()}${members.join(`${sp()},${sp()}`)}${sp()}}`;
  }
  function value(s: Schema, depth: number, root: Schema = s): string {
    if (s === true) return anyValue(depth);
    if (s === false) throw new Error("generator: an impossible schema");
    if (typeof s.$ref === "string") return value(resolve(root, s.$ref), depth, root);
    if (Array.isArray(s.anyOf)) return value(pick(s.anyOf as Schema[]), depth, root);
    const types = s.type === undefined ? null : ([] as string[]).concat(s.type as string);
    if (Array.isArray(s.enum) || "const" in s) {
      const ok = (v: unknown) => !types || types.some((t) => typeIs(t, v));
      const values = ("const" in s ? [s.const] : (s.enum as unknown[])).filter(ok);
      return JSON.stringify(pick(values));
    }
    const t = types ? pick(types) : Object.keys(s).some((k) => ["properties", "required", "additionalProperties"].includes(k)) ? "object" : pick(["object", "array", ...TYPES]);
    switch (t) {
      case "object":
        return obj(depth, (s.properties ?? {}) as Record<string, Schema>, (s.required ?? []) as string[], (s.additionalProperties ?? true) as Schema, root);
      case "array": {
        const min = (s.minItems as number | undefined) ?? 0;
        const max = (s.maxItems as number | undefined) ?? min + 3;
        const n = depth < 4 ? min + int(Math.min(3, max - min) + 1) : min;
        return `[${sp()}${Array.from({ length: n }, () => value((s.items ?? true) as Schema, depth + 1, root)).join(`${sp()},${sp()}`)}${sp()}]`;
      }
      case "string":
        return str();
      case "number":
        return number();
      case "integer":
        return integer();
      case "boolean":
        return pick(["true", "false"]);
      default:
        return "null";
    }
  }
  return {
    r,
    /** A document; a top-level number ends with one whitespace byte (its only terminator). */
    doc(schema: Schema): string {
      const v = value(schema, 0);
      return `${sp()}${v}${/^[-0-9]/.test(v) ? pick([" ", "\n"]) : ""}`;
    },
  };
}
