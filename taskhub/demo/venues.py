"""Deterministic synthetic venues: the same short code always names the same venue.

The stand-in serves them and the feed writes tweets about them, without sharing any state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

CITIES = (
    ("nyc", "New York", 40.7128, -74.0060),
    ("sf", "San Francisco", 37.7749, -122.4194),
    ("london", "London", 51.5074, -0.1278),
    ("tokyo", "Tokyo", 35.6762, 139.6503),
    ("berlin", "Berlin", 52.5200, 13.4050),
    ("saopaulo", "São Paulo", -23.5505, -46.6333),
)
_ADJECTIVES = ("Blue", "Golden", "Little", "Old", "Green", "Silver", "Corner", "Harbor", "Urban")
_NOUNS = ("Bottle", "Fox", "Lantern", "Anchor", "Oak", "Sparrow", "Mill", "Garden", "Bridge")
_ID_HASH_CHARS = 8
_KINDS = ("Coffee", "Bakery", "Pizza", "Ramen", "Bar", "Books", "Gym", "Park", "Market")


@dataclass(frozen=True, slots=True)
class Venue:
    venue_id: str
    name: str
    slug: str
    city_key: str
    city: str
    lat: float
    lng: float
    category: str

    def as_api_document(self) -> dict[str, object]:
        """The venue as a foursquare-v2-like API answers it."""
        return {
            "id": self.venue_id,
            "name": self.name,
            "location": {"city": self.city, "lat": self.lat, "lng": self.lng},
            "categories": [{"name": self.category, "primary": True}],
            "canonicalUrl": f"https://foursquare.com/v/{self.slug}/{self.venue_id}",
        }


def venue_for_code(code: str) -> Venue:
    """The venue a short code points at."""
    digest = hashlib.sha256(code.encode()).digest()
    city_key, city, lat, lng = CITIES[digest[0] % len(CITIES)]
    kind = _KINDS[digest[3] % len(_KINDS)]
    name = f"{_ADJECTIVES[digest[1] % len(_ADJECTIVES)]} {_NOUNS[digest[2] % len(_NOUNS)]} {kind}"
    return Venue(
        venue_id=digest[4:8].hex()[:_ID_HASH_CHARS] + code,
        name=name,
        slug=name.lower().replace(" ", "-"),
        city_key=city_key,
        city=city,
        lat=round(lat + (digest[16] - 128) / 2000, 5),
        lng=round(lng + (digest[17] - 128) / 2000, 5),
        category=kind,
    )


def venue_for_id(venue_id: str) -> Venue | None:
    """The venue with this id, or None; ids carry their short code, so no table is needed."""
    venue = venue_for_code(venue_id[_ID_HASH_CHARS:])
    return venue if venue.venue_id == venue_id else None
