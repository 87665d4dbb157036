/**
 * One `dsr pull` per target at a time: two processes writing the same partials would corrupt each
 * other's progress. The lock is a file holding the owner's pid, created with O_EXCL; a lock whose
 * pid is gone (a SIGKILLed pull) is stale and taken over. Per-host only (pids), like ollama's.
 */
import { mkdir, open, readFile, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { DsrError } from "../errors.js";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0); // signal 0: an existence probe, nothing is sent
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

export async function acquireLock(path: string, what: string): Promise<() => Promise<void>> {
  await mkdir(dirname(path), { recursive: true });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(path, "wx");
      await fh.writeFile(String(process.pid));
      await fh.close();
      return () => rm(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const pid = Number((await readFile(path, "utf8").catch(() => "")).trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new DsrError("DSR_PULL_LOCKED", `another dsr pull (pid ${pid}) is downloading ${what}`, {
          hint: `wait for it to finish, or stop it (it resumes later); lock file: ${path}`,
          details: { pid, lock: path },
        });
      }
      await rm(path, { force: true }); // stale: its owner is gone
    }
  }
  throw new DsrError("DSR_PULL_LOCKED", `could not take the download lock for ${what}`, { hint: `remove ${path} if no dsr pull is running` });
}
