"""Zero-shot prompts: class names and templates from a dataset, a built-in set or a file,
turned into lower-cased prompt strings the same way for every model."""

import importlib.resources
import os

from mmjax.errors import ConfigError

# Built-in template sets. 'imagenet80': the CLIP paper's 80 ImageNet templates (source named
# in the asset file's header).
TEMPLATE_SETS = {"single": ("a photo of a {}.",), "imagenet80": "clip_imagenet_templates.txt"}


def read_lines(path) -> tuple:
    """Non-empty lines of a text file, without '#' comment lines."""
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        return tuple(line.strip() for line in f if line.strip() and not line.startswith("#"))


def _asset(name) -> tuple:
    return read_lines(importlib.resources.files("mmjax.data") / "assets" / name)


def templates(option, dataset_templates) -> tuple:
    """Templates of the `templates` option: a built-in set's name, a file (one per line), a
    list; None: the dataset's own caption templates, else 'single'."""
    if option is None:
        return tuple(dataset_templates or TEMPLATE_SETS["single"])
    if isinstance(option, str):
        if option in TEMPLATE_SETS:
            chosen = TEMPLATE_SETS[option]
            return _asset(chosen) if isinstance(chosen, str) else chosen
        if not os.path.isfile(os.path.expanduser(option)):
            raise ConfigError(f"zeroshot templates {option!r} is neither a built-in set "
                              f"({', '.join(TEMPLATE_SETS)}) nor a file of one template per line")
        option = read_lines(option)
    bad = [t for t in option if t.count("{}") != 1]
    if bad or not option:
        raise ConfigError(f"zeroshot templates must each hold one {{}} for the class name: {bad[:3]}")
    return tuple(option)


def class_names(option, dataset_names, dataset) -> tuple:
    """Class names of the `class_names` option (a file, one per line in label order, or a
    list), else the dataset's."""
    if isinstance(option, str):
        if not os.path.isfile(os.path.expanduser(option)):
            raise ConfigError(f"zeroshot class_names file {option!r} does not exist; give a file "
                              "with one class name per line, in label order")
        option = read_lines(option)
    names = tuple(option or dataset_names or ())
    if not names:
        raise ConfigError(f"zeroshot: dataset {dataset!r} has no class names; give a file of them "
                          "as the entry's class_names option")
    return names


def prompts(names, template_set) -> list:
    """[classes * templates] prompts, class-major, lower-cased (published zero-shot tables use
    CLIP's lower-casing tokenizer; lower-casing here makes every tokenizer see the same text)."""
    return [t.format(name).lower() for name in names for t in template_set]
