"""One call of every task: upload, generate, img2img, inpaint, upscale, remove the
background, caption, enhance a prompt, ControlNet and LoRA.

    python examples/every_task.py
"""

from __future__ import annotations

import io

from _connect import connect
from PIL import Image as PILImage
from PIL import ImageDraw

from diffusionmaster import ControlNet, Lora, Model, Size

# A mask made with Pillow: white is repainted, black is kept.
mask = PILImage.new("L", (512, 512), 0)
ImageDraw.Draw(mask).rectangle((128, 128, 384, 384), fill=255)

# A local PNG, given as bytes (a path, a file object or a PIL image work too).
buffer = io.BytesIO()
PILImage.new("RGB", (640, 480), (30, 90, 160)).save(buffer, format="PNG")
photo = buffer.getvalue()

with connect() as client:
    uploaded = client.upload_image(photo)
    print("uploaded:", uploaded.uuid)

    images = client.text2img(
        "a castle on a hill",
        number_results=2,
        size=Size.W512_H512,
        model=Model.REV_ANIMATED_V1_2_2,
        seed=7,
        negative_prompt="fog",
    )
    print("text2img:", [image.uuid for image in images])

    edited = client.img2img("the castle at night", images[0])  # any result is an input
    print("img2img:", edited[0].uuid)

    fixed = client.inpaint("a dragon", edited[0], mask)
    print("inpaint:", fixed[0].uuid)

    big = client.upscale(fixed[0], 2)
    print("upscale:", big.to_pil().size)

    cutout = client.remove_background(big)
    print("remove_background:", cutout.format, cutout.to_pil().mode)

    print("image2text:", client.image2text(cutout))
    print("enhance_prompt:", client.enhance_prompt("a castle", versions=2))

    edges = client.preprocess_controlnet(uploaded, "canny")
    guided = client.text2img("a castle", controlnet=[ControlNet("canny", edges, weight=0.8)])
    print("controlnet:", guided[0].uuid)

    styled = client.text2img("a castle", lora=[Lora("civitai:132942@146296", 0.6)])
    print("lora:", styled[0].uuid)
