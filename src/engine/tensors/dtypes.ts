/** safetensors dtype names and their element widths in bits (facts/formats.md §3). */
export const DTYPE_BITS = {
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  BOOL: 8,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  F8_E4M3FNUZ: 8,
  F8_E5M2FNUZ: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  F64: 64,
  I64: 64,
  U64: 64,
  C64: 64,
} as const;

export type Dtype = keyof typeof DTYPE_BITS;

export const DTYPES = Object.keys(DTYPE_BITS) as Dtype[];

export function isDtype(s: unknown): s is Dtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_BITS, s);
}

export function dtypeBits(d: Dtype): number {
  return DTYPE_BITS[d];
}

/** Floating dtypes dsr can decode to f32 and encode from f32. */
export const FLOAT_CODEC_DTYPES = ["F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"] as const;
export type FloatCodecDtype = (typeof FLOAT_CODEC_DTYPES)[number];

/** Byte size of a tensor, or undefined when it overflows a safe integer or is not whole bytes. */
export function tensorByteSize(dtype: Dtype, shape: readonly number[]): number | undefined {
  // Fast path in doubles (exact below 2^53); BigInt only when the product could be inexact.
  let f = DTYPE_BITS[dtype];
  for (const d of shape) f *= d;
  if (f <= Number.MAX_SAFE_INTEGER) return f % 8 === 0 ? f / 8 : undefined;
  let n = 1n;
  for (const d of shape) n *= BigInt(d);
  const bits = n * BigInt(DTYPE_BITS[dtype]);
  if (bits % 8n !== 0n) return undefined;
  const bytes = bits / 8n;
  return bytes <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(bytes) : undefined;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}
