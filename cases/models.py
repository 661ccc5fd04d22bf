"""Clinical records: clinics, patients, cases, lesions, images, predictions and reviews."""
