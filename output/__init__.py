"""Delivery of a packaged txt2img result: format conversion, image checks, the real-size
check, and bucket uploads. Nothing here talks to A1111; it works on what a1111/results
packaged (schemas.output.Packaged).

- ``images``: headers, jpeg/webp conversion with the infotext carried in EXIF, the checks
  of what came back against what was asked.
- ``bucket``: where to upload (the job's s3Config or the BUCKET_* environment) and the
  all-or-nothing upload with presigned URLs.
- ``delivery``: ``preflight`` before the generation, ``deliver`` after it, and the size
  rules in between.
"""
