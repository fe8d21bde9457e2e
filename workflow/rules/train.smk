# train stage (rules added by the issue that builds it)
