"""Coherent answers: the country and region a prediction names are where its coordinates lie."""

import numpy as np

from geohf.geo.places import AdminAreas
from geohf.inference.answers import coherent
from geohf.inference.predictions import CellTable, GeoPredictions

# three cells: two in Canada's Nunavut, one in Greenland; Greenland's is the single most probable
CELLS = CellTable(
    names=["Nunavut #1", "Nunavut #2", "Greenland"],
    latitude=np.array([70.0, 64.0, 72.0]),
    longitude=np.array([-95.0, -90.0, -40.0]),
    country_code=np.array(["CA", "CA", "GL"], dtype=object),
    country=np.array(["Canada", "Canada", "Greenland"], dtype=object),
    region=np.array(["Nunavut", "Nunavut", ""], dtype=object),
    region_code=np.array(["CA-NU", "CA-NU", ""], dtype=object),
)
PROBS = np.array([[0.3, 0.3, 0.4]])


def raw(lat: float, lon: float) -> GeoPredictions:
    order = np.argsort(-PROBS, axis=1)
    return GeoPredictions(
        pred_latitude=np.array([lat]),
        pred_longitude=np.array([lon]),
        top_index=order,
        top_score=np.take_along_axis(PROBS, order, 1),
        cells=CELLS,
        probs=PROBS,
    )


def test_raw_outputs_name_the_best_cells_country_wherever_the_point_is():
    pred = raw(78.8, -89.5)  # a weighted point on Ellesmere Island (Canada)
    assert pred.pred_country_code.tolist() == ["GL"]  # what geohf answered before: incoherent


def test_point_answer_names_where_the_coordinates_lie_with_its_summed_probability():
    pred = coherent(raw(78.8, -89.5), "point")
    assert pred.pred_country_code.tolist() == ["CA"] and pred.pred_region.tolist() == ["Nunavut"]
    assert pred.country_score[0] == np.float64(0.6)  # both Canadian cells
    at_sea = coherent(raw(75.0, -60.0), "point")  # Baffin Bay
    rows = AdminAreas.default().containing(at_sea.pred_latitude, at_sea.pred_longitude)
    assert rows[0] >= 0 and rows[0] == at_sea.area_row[0]
    assert at_sea.records()[0]["country_score"] is not None


def test_hierarchical_answer_decides_country_first_then_places_the_point_inside():
    pred = coherent(raw(72.0, -40.0), "hierarchical")  # the raw point is Greenland's centroid
    assert pred.pred_country_code.tolist() == ["CA"]  # 0.6 for Canada beats 0.4 for Greenland
    assert pred.pred_region_code.tolist() == ["CA-NU"]
    areas = AdminAreas.default()
    assert areas.table.region_code[areas.containing(pred.pred_latitude, pred.pred_longitude)[0]] == "CA-NU"
    assert pred.country_score[0] == np.float64(0.6)


def test_predictor_answers_are_coherent(tiny_model_dir, tiny_dataset):
    from datasets import load_dataset

    from geohf.inference.predictor import GeoPredictor

    test = load_dataset(str(tiny_dataset))["test"]
    areas = AdminAreas.default()
    for answer in ("point", "hierarchical"):
        pred = GeoPredictor(str(tiny_model_dir), answer=answer).predict_dataset(test)
        rows = areas.containing(pred.pred_latitude, pred.pred_longitude)
        assert (rows >= 0).all() and (rows == pred.area_row).all()
        assert (pred.pred_country_code == areas.table.lookup("country_code", rows)).all()
        assert ((pred.country_score >= 0) & (pred.country_score <= 1 + 1e-9)).all()
