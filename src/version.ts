// Replaced at build time by esbuild's define; falls back for tsx/vitest runs.
declare const __DSR_VERSION__: string | undefined;
export const VERSION: string = typeof __DSR_VERSION__ === "string" ? __DSR_VERSION__ : "0.1.0-dev";
