"""The poster PNG: `render` picks OpenGL (`gl`, headless EGL) or the numpy fallback (`software`);
both take camera, light and framing from `view`."""
