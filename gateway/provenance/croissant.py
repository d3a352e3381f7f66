"""The dataset's Croissant 1.1 metadata (croissant.json), as a JSON object (pure).

What it holds (MLCommons Croissant 1.1, with its Responsible AI vocabulary and PROV-O):
- `name`, `description`, `conformsTo` http://mlcommons.org/croissant/1.1, `version`,
  `datePublished`;
- `distribution`: one `cr:FileObject` per file of the directory (but croissant.json itself),
  `contentUrl` its relative path, `sha256` its digest;
- one `recordSet` "readings" whose fields are the Parquet columns;
- `rai:dataCollection`, `rai:dataCollectionType`, `rai:dataCollectionTimeframe` (the first
  and last device timestamps, when the rows have any);
- `prov:wasDerivedFrom`: the ledger (the gateway's vkey, the signed checkpoint's size and
  root); `prov:wasGeneratedBy`: the export, with the dataset's own ledger entry (index and
  dataset root) as `iot:entry` and `iot:root`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.provenance.dataset import DATA_FILE

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
IOT = "https://github.com/iot-anchor/iot-anchor/blob/main/docs/provenance.md#"
RECORD_SET = "readings"

CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileObject": "cr:fileObject",
    "fileProperty": "cr:fileProperty",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "iot": IOT,
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "prov": "http://www.w3.org/ns/prov#",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "sc": "https://schema.org/",
    "samplingRate": "cr:samplingRate",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

_FORMATS = {".parquet": "application/x-parquet", ".json": "application/json",
            ".cbor": "application/cbor-seq", ".bin": "application/octet-stream"}


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _field(name: str, data_type: str, description: str) -> dict[str, Any]:
    return {"@type": "cr:Field", "@id": f"{RECORD_SET}/{name}", "name": name,
            "description": description, "dataType": data_type,
            "source": {"fileObject": {"@id": DATA_FILE}, "extract": {"column": name}}}


def metadata(*, name: str, description: str, files: Sequence[tuple[str, str]],
             sensors: Sequence[str], rows: int, devices: Sequence[str],
             timeframe: tuple[int, int] | None, vkey: str, checkpoint_size: int,
             checkpoint_root: bytes, entry: int, root: bytes, selection: dict[str, Any],
             published_ms: int) -> dict[str, Any]:
    """croissant.json for a dataset; `files` are (relative path, sha256 hex), sorted."""
    fields = [
        _field("device", "sc:Text", "the id of the device that signed the reading"),
        _field("seq", "sc:Integer", "the device's sequence number of the reading"),
        _field("ts", "sc:Date", "the device clock (UTC); null where it was unset"),
        *[_field(s, "sc:Float", f"sensor {s!r}; null where the reading lacks it")
          for s in sensors],
        _field("leaf", "sc:Text", "RFC 6962 leaf hash of the reading's COSE message "
               "(32 bytes)"),
        _field("entry", "sc:Integer", "the ledger index of the reading's batch entry"),
    ]
    distribution = [{
        "@type": "cr:FileObject", "@id": path, "name": path, "contentUrl": path,
        "encodingFormat": next((f for ext, f in _FORMATS.items() if path.endswith(ext)),
                               "application/octet-stream"),
        "sha256": digest,
    } for path, digest in files]
    out: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": name,
        "description": description,
        "url": f"{IOT}dataset",
        "citeAs": f"{name}, iot-anchor dataset entry {entry} (root {root.hex()})",
        "version": "1.0.0",
        "datePublished": datetime.fromtimestamp(published_ms / 1000, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"),
        "license": "https://spdx.org/licenses/NOASSERTION.html",
        "creator": {"@type": "sc:Organization", "name": f"iot-anchor gateway {vkey.split('+')[0]}"},
        "rai:dataCollection": (
            f"{rows} sensor readings from {len(devices)} device(s) ({', '.join(devices)}), "
            "each signed on the device (COSE_Sign1, ES256) and anchored by an iot-anchor "
            "gateway in its RFC 6962 ledger; exported with 'iot-anchor dataset export'."),
        "rai:dataCollectionType": ["Sensors"],
        "rai:dataCollectionRawData": (
            "provenance/readings.bin holds every row's original signed message"),
        "prov:wasDerivedFrom": [{
            "@id": f"{IOT}ledger",
            "name": "iot-anchor ledger",
            "description": "the gateway's ledger, up to the signed checkpoint",
            "iot:gatewayKey": vkey,
            "iot:checkpointSize": checkpoint_size,
            "iot:checkpointRoot": checkpoint_root.hex(),
        }],
        "prov:wasGeneratedBy": {
            "@type": "prov:Activity",
            "@id": f"{IOT}export",
            "name": "iot-anchor dataset export",
            "description": "the selection, anchored as the dataset's own ledger entry",
            "iot:entry": entry,
            "iot:root": root.hex(),
            "iot:selection": selection,
        },
        "distribution": distribution,
        "recordSet": [{
            "@type": "cr:RecordSet", "@id": RECORD_SET, "name": RECORD_SET,
            "description": "one row per anchored reading, in (device, seq) order",
            "key": [{"@id": f"{RECORD_SET}/device"}, {"@id": f"{RECORD_SET}/seq"}],
            "field": fields,
        }],
    }
    if timeframe is not None:
        out["rai:dataCollectionTimeframe"] = [_iso(timeframe[0]), _iso(timeframe[1])]
    return out
