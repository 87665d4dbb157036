/** Free space on the filesystem that will hold a path (the nearest existing ancestor is asked). */
import { statfs } from "node:fs/promises";
import { dirname } from "node:path";

export async function freeBytes(path: string): Promise<number> {
  for (let p = path; ; p = dirname(p)) {
    try {
      const s = await statfs(p);
      return Number(s.bavail) * Number(s.bsize);
    } catch (e) {
      if (dirname(p) === p) throw e;
    }
  }
}
