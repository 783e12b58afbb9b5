"""Stand-in for ``modules/extra_networks.py`` (A1111 v1.10.1).

Mirrored: registry + aliases, ``initialize()`` clearing both, ExtraNetworkParams (items/positional/
named, ``split('=', 2)`` rule, ``__eq__`` on items), ExtraNetwork base (NotImplementedError),
lookup (registry then alias; unknown names logged and skipped), activate (mentioned networks with
their params, then every other registered network with ``[]``, errors swallowed via errors.display,
then ``p.scripts.after_extra_networks_activate``), deactivate, parse_prompt / parse_prompts (tags
stripped from every prompt; only the FIRST prompt's tags are returned).
Left out: the hypernetwork network and the user-metadata helpers.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict

from modules import errors

extra_network_registry = {}
extra_network_aliases = {}


def initialize():
    extra_network_registry.clear()
    extra_network_aliases.clear()


def register_extra_network(extra_network):
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network, alias):
    extra_network_aliases[alias] = extra_network


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other):
        return self.items == other.items

    def __repr__(self):
        return f"ExtraNetworkParams(items={self.items!r})"


class ExtraNetwork:
    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


def lookup_extra_networks(extra_network_data):
    res = {}
    for name, args in list(extra_network_data.items()):
        network = extra_network_registry.get(name, None)
        alias = extra_network_aliases.get(name, None)
        if alias is not None and network is None:
            network = alias
        if network is None:
            logging.info(f"Skipping unknown extra network: {name}")
            continue
        res.setdefault(network, []).extend(args)
    return res


def activate(p, extra_network_data):
    activated = []
    for network, args in lookup_extra_networks(extra_network_data).items():
        try:
            network.activate(p, args)
            activated.append(network)
        except Exception as e:
            errors.display(e, f"activating extra network {network.name} with arguments {args}")

    for name, network in extra_network_registry.items():
        if network in activated:
            continue
        try:
            network.activate(p, [])
        except Exception as e:
            errors.display(e, f"activating extra network {name}")

    if p.scripts is not None:
        p.scripts.after_extra_networks_activate(p, batch_number=p.iteration, prompts=p.prompts, seeds=p.seeds,
                                                subseeds=p.subseeds, extra_network_data=extra_network_data)


def deactivate(p, extra_network_data):
    data = lookup_extra_networks(extra_network_data)
    for network in data:
        try:
            network.deactivate(p)
        except Exception as e:
            errors.display(e, f"deactivating extra network {network.name}")

    for name, network in extra_network_registry.items():
        if network in data:
            continue
        try:
            network.deactivate(p)
        except Exception as e:
            errors.display(e, f"deactivating unmentioned extra network {name}")


re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def parse_prompt(prompt):
    res = defaultdict(list)

    def found(m):
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    prompt = re.sub(re_extra_net, found, prompt)
    return prompt, res


def parse_prompts(prompts):
    res = []
    extra_data = None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed
        res.append(updated)
    return res, extra_data


def get_user_metadata(filename, lister=None):
    return {}
