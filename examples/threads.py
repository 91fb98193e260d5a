"""One client shared by many threads: each call receives only its own images.

python examples/threads.py
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from _connect import connect

prompts = [f"a lighthouse, variation {n}" for n in range(8)]

with connect() as client:
    # Your own threads (a web server's, a ThreadPoolExecutor's...) share the client.
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: client.text2img(p, number_results=2), prompts))
    for prompt, images in zip(prompts, results, strict=True):
        assert {image.alt_text for image in images} == {prompt}
        print(prompt, "->", [image.uuid for image in images])

    # Or let the client run the calls in the background and collect futures.
    futures = [client.submit(client.enhance_prompt, p) for p in prompts[:3]]
    for future in futures:
        print(future.result())
