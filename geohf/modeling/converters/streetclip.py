"""StreetCLIP (Haas, Alberti, Skreta 2023; Hub ``geolocal/StreetCLIP``, CLIP ViT-L/14-336) as a zero-shot geohf model.

StreetCLIP classifies by CLIP's zero-shot rule: the image's unit embedding against the unit text embeddings of
one prompt per class (its paper and model card: ``"A Street View photo in {country}."``), times
``exp(logit_scale)``. geohf embeds the prompts once, at conversion: per class the mean of its prompts' unit
embeddings (a prompt ensemble, CLIP's own recipe), made unit again, times ``exp(logit_scale)``, becomes the
weight of a ``classification`` head (zero bias) on the CLIP tower's unit image embedding (``projection`` and
``normalize``). One template gives exactly CLIP's ``logits_per_image``.

The classes are the countries of geohf's shipped boundaries (and with ``regions``, their admin-1 regions,
prompted ``"{region}, {country}"``), each placed at a point inside its polygons; the country head is primary and
answers with its best country's point (``argmax``, ``answer="cell"``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...errors import UserError, one_line
from ..backbones import is_transformers_name
from ..configuration_geohf import HeadSpec
from ..factory import make_config
from ..modeling_geohf import GeoModelForImageGeolocation, build_model
from .folder import check_output, write_model_folder

STREETCLIP = "geolocal/StreetCLIP"
STREETCLIP_LICENSE = "CC BY-NC 4.0, non-commercial (its model card)"
TEMPLATES = ("A Street View photo in {}.",)  # StreetCLIP's prompt (arXiv:2302.00275; its model card)


@dataclasses.dataclass(frozen=True)
class Conversion:
    """What :func:`convert_streetclip` wrote."""

    output: Path
    clip: str
    templates: tuple[str, ...]
    classes: dict[str, int]

    def summary(self) -> str:
        heads = ", ".join(f"{name} ({n:,} classes)" for name, n in self.classes.items())
        return (
            f"wrote {self.output}: zero-shot {heads} on {self.clip}, {len(self.templates)} prompt template(s) "
            f"({' | '.join(self.templates)}); it predicts the best country's point (coordinate rule argmax)"
            + (f"; StreetCLIP's weights are {STREETCLIP_LICENSE}" if self.clip == STREETCLIP else "")
        )


@dataclasses.dataclass(frozen=True)
class ZeroShotClasses:
    """One head's classes: codes, the names the prompts read, each class's country and a point inside it."""

    name: str
    codes: list[str]
    prompts: list[str]
    countries: list[str]
    latitude: list[float]
    longitude: list[float]
    country_names: list[str]
    region_names: list[str]

    def spec(self) -> HeadSpec:
        cells = {
            "name": self.codes,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "country_code": self.countries,
            "country": self.country_names,
            "region_code": self.codes if self.name == "region" else [""] * len(self.codes),
            "region": self.region_names,
        }
        return HeadSpec(
            name=self.name,
            type="classification",
            label_column=f"{self.name}_code",
            labels=self.codes,
            label_country=self.countries,
            cells=cells,
        )


def boundary_classes(regions: bool = False, boundaries: str | os.PathLike | None = None) -> list[ZeroShotClasses]:
    """Countries (and admin-1 regions) of the boundaries, each at a point inside its polygons."""
    from ...geo.boundaries import load_boundaries
    from ...geo.countries import country_name

    table = load_boundaries(boundaries)
    table = table[table["country_code"].astype(str).str.len() == 2]
    out = []
    levels = [("country", "country_code")] + ([("region", "region_code")] if regions else [])
    for name, column in levels:
        rows = table[table[column].astype(str) != ""]
        shapes = rows.dissolve(by=column, as_index=False, aggfunc="first").sort_values(column)
        points = shapes.geometry.representative_point()
        countries = shapes["country_code"].astype(str).tolist()
        country_names = [country_name(c) for c in countries]
        if name == "country":
            prompts, region_names = country_names, [""] * len(countries)
        else:
            region_names = shapes["region"].astype(str).tolist()
            prompts = [f"{r}, {c}" for r, c in zip(region_names, country_names)]
        out.append(
            ZeroShotClasses(
                name=name,
                codes=shapes[column].astype(str).tolist(),
                prompts=prompts,
                countries=countries,
                latitude=[round(float(v), 6) for v in points.y],
                longitude=[round(float(v), 6) for v in points.x],
                country_names=country_names,
                region_names=region_names,
            )
        )
    return out


@torch.no_grad()
def text_classifier(clip_model, tokenizer, prompts: Sequence[str], templates: Sequence[str], batch_size: int = 256):
    """(C, D) ``exp(logit_scale)`` times the unit mean of each class's unit prompt embeddings (one per template)."""
    weights = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="embedding prompts", disable=len(prompts) < 1024):
        names = prompts[start : start + batch_size]
        per_template = []
        for template in templates:
            tokens = tokenizer([template.format(n) for n in names], padding=True, return_tensors="pt")
            out = clip_model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            per_template.append(F.normalize(getattr(out, "pooler_output", out).float(), dim=-1))
        weights.append(F.normalize(torch.stack(per_template).mean(0), dim=-1))
    return clip_model.logit_scale.exp().float() * torch.cat(weights)


def _load_clip(clip: str):
    from transformers import AutoTokenizer, CLIPModel

    local = Path(clip).expanduser().is_dir()
    if not local and not is_transformers_name(clip):
        raise UserError(f"--clip {clip}: neither a local folder of a CLIPModel nor a Hub id (org/name)")
    source = str(Path(clip).expanduser()) if local else clip
    try:
        return source, CLIPModel.from_pretrained(source).eval(), AutoTokenizer.from_pretrained(source)
    except OSError as err:
        reason = one_line(err)[:200]
        if local:
            raise UserError(f"--clip {clip}: cannot read the CLIP model and tokenizer ({reason})") from err
        raise UserError(
            f"--clip {clip}: StreetCLIP's weights and tokenizer come from the Hugging Face Hub, which is unreachable "
            f"({reason}); connect to the Hub, or pass --clip LOCAL_FOLDER (a saved CLIPModel with its tokenizer)"
        ) from err


def build_streetclip(
    clip: str = STREETCLIP,
    templates: Sequence[str] = TEMPLATES,
    regions: bool = False,
    classes: list[ZeroShotClasses] | None = None,
) -> tuple[GeoModelForImageGeolocation, Conversion]:
    """StreetCLIP's zero-shot classifier as a geohf model, in memory (see the module docstring); ``classes``
    default to the shipped boundaries' countries (and ``regions``)."""
    templates = tuple(templates)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise UserError(f"--template {bad[0] if bad else ''!r}: a prompt template holds one {{}} for the place name")
    source, clip_model, tokenizer = _load_clip(clip)
    classes = classes or boundary_classes(regions)
    config = make_config(
        source,
        [c.spec() for c in classes],
        backbone_kwargs={"projection": True, "normalize": True},
        coordinate_method="argmax",
        answer="cell",
    )
    if config.backbone_kwargs["hf_config"].get("model_type") != "clip_vision_model":
        raise UserError(f"--clip {clip}: not a CLIP checkpoint")
    model = build_model(config, None)
    tower = {k: v for k, v in clip_model.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    model.geo.backbone.model.load_state_dict(tower, strict=True)
    for head in classes:
        weight = text_classifier(clip_model, tokenizer, head.prompts, templates)
        fc = model.heads[head.name].fc
        with torch.no_grad():
            fc.weight.copy_(weight)
            fc.bias.zero_()
    model.config.pretrained_source = (
        f"{clip} (CLIP image tower); zero-shot heads of its text embeddings of {len(templates)} prompt template(s)"
        + (f"; {STREETCLIP_LICENSE}" if clip == STREETCLIP else "")
    )
    model.eval()
    counts = {c.name: len(c.codes) for c in classes}
    return model, Conversion(output=Path(), clip=clip, templates=templates, classes=counts)


def convert_streetclip(
    output: str | os.PathLike,
    clip: str = STREETCLIP,
    templates: Sequence[str] = TEMPLATES,
    regions: bool = False,
    overwrite: bool = False,
) -> Conversion:
    """Write StreetCLIP's zero-shot classifier (:func:`build_streetclip`) to the model folder ``output``."""
    output = check_output(output, overwrite)
    model, conversion = build_streetclip(clip, templates, regions)
    write_model_folder(model, output)
    return dataclasses.replace(conversion, output=output)
