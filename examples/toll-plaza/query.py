"""Prints how many vehicles passed each toll plaza, from the consumer's database, and checks
that no event is stored twice."""

import argparse
import json

from tolldb import Database


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--db", default="sqlite:///toll.db")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args()
    db = Database(args.db)
    counts = db.query("SELECT plaza_id, COUNT(*) FROM toll_events GROUP BY plaza_id ORDER BY plaza_id")
    (total,), = db.query("SELECT COUNT(*) FROM toll_events")
    (distinct,), = db.query("SELECT COUNT(DISTINCT event_id) FROM toll_events")
    by_type = db.query("SELECT vehicle_type, COUNT(*) FROM toll_events GROUP BY vehicle_type ORDER BY 2 DESC")
    db.close()
    if args.json:
        print(json.dumps({"plazas": {str(p): c for p, c in counts}, "total": total,
                          "distinct_events": distinct}))
        return
    print(f"{'plaza':>5}  {'vehicles':>8}")
    for plaza, count in counts:
        print(f"{plaza:>5}  {count:>8}")
    print(f"total {total} events, {distinct} distinct; by type: "
          + ", ".join(f"{t} {c}" for t, c in by_type))


if __name__ == "__main__":
    main()
