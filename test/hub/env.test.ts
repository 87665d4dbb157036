/** hubOptionsFromEnv: endpoints and tokens resolved in huggingface_hub's / the modelscope SDK's order. */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { hubOptionsFromEnv, looksLikeRepoId } from "../../src/engine/hub/index.js";
import { tempDir } from "../support/tmp.js";

describe("hubOptionsFromEnv", () => {
  it("uses defaults, then env, then overrides", async () => {
    const home = await tempDir();
    const d = hubOptionsFromEnv({ HF_HOME: home });
    expect(d).toMatchObject({ hfEndpoint: "https://huggingface.co", msEndpoint: "https://www.modelscope.cn", hfToken: undefined, msToken: undefined });
    await writeFile(join(home, "token"), "hf_fromfile\n");
    expect(hubOptionsFromEnv({ HF_HOME: home }).hfToken).toBe("hf_fromfile");
    expect(hubOptionsFromEnv({ HF_HOME: home, HUGGING_FACE_HUB_TOKEN: "hf_legacy" }).hfToken).toBe("hf_legacy");
    expect(hubOptionsFromEnv({ HF_HOME: home, HF_TOKEN: "hf_env", HUGGING_FACE_HUB_TOKEN: "hf_legacy" }).hfToken).toBe("hf_env");
    await mkdir(join(home, "x"));
    await writeFile(join(home, "x", "t"), "hf_path");
    expect(hubOptionsFromEnv({ HF_HOME: home, HF_TOKEN_PATH: join(home, "x", "t") }).hfToken).toBe("hf_path");
    const e = hubOptionsFromEnv({ HF_HOME: home, HF_ENDPOINT: "https://hf-mirror.com/", MODELSCOPE_DOMAIN: "www.modelscope.ai", MODELSCOPE_API_TOKEN: "ms1" });
    expect(e).toMatchObject({ hfEndpoint: "https://hf-mirror.com", msEndpoint: "https://www.modelscope.ai", msToken: "ms1" });
    expect(hubOptionsFromEnv({ HF_HOME: home, DSR_MODELSCOPE_ENDPOINT: "http://127.0.0.1:9/", MODELSCOPE_DOMAIN: "x" }).msEndpoint).toBe("http://127.0.0.1:9");
    expect(hubOptionsFromEnv({ HF_HOME: home, HF_TOKEN: "a" }, { token: "b", hfToken: undefined })).toMatchObject({ token: "b", hfToken: "a" });
  });

  it("tells repo ids from local paths (existing paths win)", async () => {
    const dir = await tempDir();
    expect(looksLikeRepoId("deepseek-ai/DeepSeek-R1")).toBe(true);
    expect(looksLikeRepoId("ms:org/name@v1")).toBe(true);
    expect(looksLikeRepoId("./org/name")).toBe(false);
    expect(looksLikeRepoId(dir)).toBe(false);
    expect(looksLikeRepoId("model.safetensors")).toBe(false);
  });
});
