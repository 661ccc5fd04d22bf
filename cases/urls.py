from django.urls import path

from cases import correction_views, outcome_views, report_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("patients/", views.patient_list, name="patient_list"),
    path("patients/new/", views.patient_create, name="patient_create"),
    path("patients/<int:pk>/", views.patient_detail, name="patient_detail"),
    path("patients/<int:patient_pk>/cases/new/", views.case_create, name="case_create"),
    path("patients/<int:patient_pk>/lesions/<int:number>/", views.tracked_lesion, name="tracked_lesion"),
    path("patients/<int:patient_pk>/lesions/<int:number>/place/", correction_views.lesion_place, name="lesion_place"),
    path("cases/", views.case_list, name="case_list"),
    path("cases/<int:pk>/", views.case_detail, name="case_detail"),
    path("cases/<int:pk>/status.json", views.case_status, name="case_status"),
    path("cases/<int:pk>/report.pdf", report_views.case_report, name="case_report"),
    path("cases/<int:case_pk>/lesions/new/", views.lesion_create, name="lesion_create"),
    path("cases/<int:pk>/claim/", views.case_claim, name="case_claim"),
    path("cases/<int:pk>/release/", views.case_release, name="case_release"),
    path("cases/<int:pk>/review/", views.case_review, name="case_review"),
    path("lesions/<int:pk>/", views.lesion_detail, name="lesion_detail"),
    path("images/<int:pk>/", views.image_detail, name="image_detail"),
    path("images/<int:pk>/file/", views.image_file, name="image_file"),
    path("predictions/<int:pk>/heatmap/", views.heatmap_file, name="heatmap_file"),
    path("predictions/<int:pk>/retry/", views.prediction_retry, name="prediction_retry"),
    path("queue/", views.review_queue, name="review_queue"),
    path("patients/<int:pk>/correct/", correction_views.patient_correct, name="patient_correct"),
    path("cases/<int:pk>/correct/", correction_views.case_correct, name="case_correct"),
    path("cases/<int:pk>/close/", correction_views.case_close, name="case_close"),
    path("lesions/<int:pk>/correct/", correction_views.lesion_correct, name="lesion_correct"),
    path("reviews/<int:pk>/amend/", correction_views.review_amend, name="review_amend"),
    path("lesions/<int:pk>/outcome/", outcome_views.lesion_outcome, name="lesion_outcome"),
]
