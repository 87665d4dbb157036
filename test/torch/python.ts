/**
 * Finds a python with PyTorch for the torch worker's tests: $DSR_TEST_PYTHON, python3, /usr/bin/python3
 * (Debian's python3-torch, which .ci/run installs). Without one the tests skip, unless
 * DSR_REQUIRE_TORCH is set (CI), where they fail: a missing torch must not pass as green.
 */
import { spawnSync } from "node:child_process";

function hasTorch(py: string): boolean {
  return spawnSync(py, ["-c", "import torch"], { stdio: "ignore" }).status === 0;
}

export const TORCH_PYTHON = [process.env.DSR_TEST_PYTHON, "python3", "/usr/bin/python3"].find((p): p is string => !!p && hasTorch(p));

if (!TORCH_PYTHON && process.env.DSR_REQUIRE_TORCH) throw new Error("DSR_REQUIRE_TORCH is set but no python with torch was found (apt-get install python3-torch)");
if (!TORCH_PYTHON) console.warn("torch worker tests skipped: no python with torch (apt-get install python3-torch, or set DSR_TEST_PYTHON)");
