"""From image URLs to the framed picture the model sees: `urls` (SSRF checks), `download` (safe
fetch), `images` (decode with limits, framing), `matting` (rembg), `selection` (first usable URL wins)."""
