"""The flows of the image-in actions (img2img, upscale), kept out of handler.py, which routes
to them. Each takes the raw job, the parsed job, the settings, the job's start time and the
handler's cancel check."""
