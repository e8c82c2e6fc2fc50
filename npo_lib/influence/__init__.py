"""Token influence: tracked modules, preconditioners, the differential direction and exact row
scores, the scorer registry, kronfluence's comparison scores, selection, and the files INFLUENCE
reads."""
