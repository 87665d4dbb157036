/** Aligned plain-text tables for TTY output. */
export interface Column {
  header: string;
  align?: "left" | "right";
}

export function renderTable(columns: readonly Column[], rows: readonly (readonly string[])[]): string {
  const widths = columns.map((c, i) => Math.max(c.header.length, ...rows.map((r) => (r[i] ?? "").length)));
  const fmt = (cells: readonly string[]) =>
    cells
      .map((cell, i) => (columns[i].align === "right" ? cell.padStart(widths[i]) : cell.padEnd(widths[i])))
      .join("  ")
      .trimEnd();
  return [fmt(columns.map((c) => c.header)), fmt(widths.map((w) => "─".repeat(w))), ...rows.map(fmt)].join("\n");
}

const UNITS = ["B", "KB", "MB", "GB", "TB", "PB"];
/** Decimal units (GB = 1e9), as hubs and disk vendors report sizes. */
export function formatBytes(n: number, digits = 1): string {
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1000 && i < UNITS.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(digits)} ${UNITS[i]}`;
}

const GIB_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
/** Binary units (GiB = 2^30), as GPU memory is reported. */
export function formatGiB(n: number, digits = 1): string {
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < GIB_UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(digits)} ${GIB_UNITS[i]}`;
}

export function formatCount(n: number): string {
  const abs = Math.abs(n);
  if (abs >= 1e12) return (n / 1e12).toFixed(2) + "T";
  if (abs >= 1e9) return (n / 1e9).toFixed(2) + "B";
  if (abs >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (abs >= 1e3) return (n / 1e3).toFixed(1) + "K";
  return String(n);
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)}s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m${String(Math.round(seconds % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}
