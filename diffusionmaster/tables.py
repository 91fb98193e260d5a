"""The id tables of the protocol (protocol.md §8), as enums and constants.

Pure data: the client validates arguments against these tables, and the
emulator validates received frames against the same ones. Enums are ``IntEnum``
or ``str`` enums, so plain ints and strings are accepted wherever they are.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "CONTROLNET_PREPROCESSORS",
    "CONTROLNET_PREPROCESSORS_SDXL",
    "CONTROLNET_PREPROCESSOR_OF",
    "LANGUAGE_IDS",
    "PREPROCESSOR_TYPES",
    "SIZES",
    "ControlMode",
    "Model",
    "Scheduler",
    "Size",
    "Style",
    "TaskType",
]


class TaskType(enum.IntEnum):
    """`taskType` values (§8.2)."""

    TEXT_TO_IMAGE = 1
    IMAGE_TO_IMAGE = 2
    INPAINTING = 3
    IMAGE_TO_TEXT = 4
    PROMPT_ENHANCER = 5
    UPSCALE = 6
    UPLOAD = 7
    REMOVE_BACKGROUND = 8
    CONTROLNET_TEXT_TO_IMAGE = 9
    CONTROLNET_IMAGE_TO_IMAGE = 10
    CONTROLNET_PREPROCESS = 11


class Size(enum.IntEnum):
    """`sizeId` values (§8.1); the name gives width x height."""

    W512_H512 = 1
    W512_H768 = 2
    W512_H1024 = 3
    W768_H512 = 4
    W1024_H512 = 5
    W704_H512 = 6
    W896_H512 = 7
    W512_H896 = 8
    W512_H704 = 9
    W1024_H1024 = 11
    W1344_H768 = 16
    W768_H1344 = 17
    W640_H960 = 20
    W960_H640 = 21

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return SIZES[int(self)]


#: sizeId -> (width, height)
SIZES: dict[int, tuple[int, int]] = {
    1: (512, 512),
    2: (512, 768),
    3: (512, 1024),
    4: (768, 512),
    5: (1024, 512),
    6: (704, 512),
    7: (896, 512),
    8: (512, 896),
    9: (512, 704),
    11: (1024, 1024),
    16: (1344, 768),
    17: (768, 1344),
    20: (640, 960),
    21: (960, 640),
}


class Model(enum.IntEnum):
    """`modelId` values (§8.3). AIR strings such as ``civitai:4201@130072`` are accepted too."""

    SDXL_V1_0 = 4
    REV_ANIMATED_V1_2_2 = 13
    ABSOLUTEREALITY_V1_8_1 = 18
    CYBERREALISTIC_V3_2 = 19
    DREAMSHAPER_V7_0 = 20
    GHOSTMIX_V2_0 = 22
    SAMARITAN_3D_CARTOON_V3_0 = 25


class Scheduler(enum.IntEnum):
    """`schedulerId` values (§8.4)."""

    MODEL_DEFAULT = 1
    DDIM = 2
    DDIM_INVERSE = 3
    DDPM = 4
    DEIS_MULTISTEP = 5
    DPM_SOLVER_SINGLESTEP = 6
    DPM_SOLVER_MULTISTEP = 7
    HEUN_DISCRETE = 8
    KDPM2_DISCRETE = 9
    KDPM2_ANCESTRAL_DISCRETE = 10
    KARRAS_VE = 11
    LMS_DISCRETE = 12
    PNDM = 13
    SCORE_SDE_VE = 14
    IPNDM = 15
    SCORE_SDE_VP = 16
    EULER_DISCRETE = 17
    EULER_ANCESTRAL_DISCRETE = 18
    VQ_DIFFUSION = 19
    UNIPC_MULTISTEP = 20
    REPAINT = 21
    DPMPP_2M_KARRAS = 22
    DPMPP_2M_SDE_KARRAS = 23
    DPMPP_2M_SDE = 24
    DPMPP_SDE_KARRAS = 25
    DPMPP_SDE = 26


class Style(enum.IntEnum):
    """`styleId` values (§8.5)."""

    NONE = 1
    ANIME = 2
    PHOTOGRAPHIC = 3
    DIGITAL_ART = 4
    COMIC_BOOK = 5
    FANTASY_ART = 6
    ANALOG_FILM = 7
    NEON_PUNK = 8
    ISOMETRIC = 9
    LOW_POLY = 10
    ORIGAMI = 11
    LINE_ART = 12


class ControlMode(str, enum.Enum):
    """`controlMode` of a ControlNet item (§3)."""

    BALANCED = "balanced"
    PROMPT = "prompt"
    CONTROLNET = "controlnet"


#: ControlNet `preprocessor` names of a `newTask.controlNet[]` item (§8.6), SD 1.5.
CONTROLNET_PREPROCESSORS: frozenset[str] = frozenset(
    {
        "canny", "depth_leres", "depth_midas", "depth_zoe", "inpaint_global_harmonious",
        "lineart_anime", "lineart_coarse", "lineart_realistic", "lineart_standard", "mlsd",
        "normal_bae", "openpose", "openpose_face", "openpose_faceonly", "openpose_full",
        "openpose_hand", "scribble_hed", "scribble_pidinet", "seg_ofade20k", "seg_ofcoco",
        "seg_ufade20k", "shuffle", "softedge_hed", "softedge_hedsafe", "softedge_pidinet",
        "softedge_pidisafe", "tile_gaussian",
    }
)  # fmt: skip

#: The subset of ControlNet preprocessors that SDXL models support (§8.6).
CONTROLNET_PREPROCESSORS_SDXL: frozenset[str] = frozenset(
    {"canny", "depth_leres", "depth_midas", "depth_zoe", "inpaint_global_harmonious"}
)

#: `preProcessorType` names of the ControlNet preprocess task (§5).
PREPROCESSOR_TYPES: frozenset[str] = frozenset(
    {
        "canny", "depth", "mlsd", "normalbae", "openpose", "tile", "seg", "lineart",
        "lineart_anime", "shuffle", "scribble", "softedge",
    }
)  # fmt: skip

#: The ControlNet `preprocessor` name (§8.6) that takes the guide made by each
#: preprocess type (§5): ``ControlNet("depth", guide)`` sends ``depth_midas``. The
#: two lists name the same families differently; where a family has several
#: ControlNet names, the common default is chosen (pass another name to override).
CONTROLNET_PREPROCESSOR_OF: Mapping[str, str] = MappingProxyType(
    {
        "canny": "canny", "depth": "depth_midas", "lineart": "lineart_standard",
        "lineart_anime": "lineart_anime", "mlsd": "mlsd", "normalbae": "normal_bae",
        "openpose": "openpose", "scribble": "scribble_pidinet", "seg": "seg_ofade20k",
        "shuffle": "shuffle", "softedge": "softedge_pidinet", "tile": "tile_gaussian",
    }
)  # fmt: skip

#: Valid `promptLanguageId` values (§8.7).
LANGUAGE_IDS = range(1, 299)
