"""What model-written SQL may call: allow-lists of functions and cast types, per engine.

A list of what is allowed, not of what is forbidden: a function nobody thought of (a new
extension's, a catalog helper that runs SQL text) is refused because it is not here. The lists
cover what analysts' SELECTs use: aggregates, window functions, math, strings, dates and times,
casts, conditionals, JSON and arrays. Everything here is pure: it reads only its arguments.

Two layers use them. The parser (``tools.sql_guard``) checks sqlglot's expression classes (it
normalizes many functions to typed classes, the same for every dialect) and, for functions it does
not know (``exp.Anonymous``), the name per dialect. SQLite also checks at the engine, in its
authorizer (``tools.sql_sqlite``), with the names SQLite itself calls.
"""

from __future__ import annotations

from sqlglot import exp

_CLASS_NAMES = """
Avg Count CountIf Max Min Sum Median Mode Stddev StddevPop StddevSamp Variance VariancePop Corr CovarPop
CovarSamp GroupConcat ArrayAgg AnyValue ApproxDistinct ApproxQuantile PercentileCont PercentileDisc Quantile
LogicalAnd LogicalOr BitwiseAndAgg BitwiseOrAgg BitwiseXorAgg ArgMax ArgMin First Last Kurtosis Skewness
RegrAvgx RegrAvgy RegrCount RegrIntercept RegrR2 RegrSlope RegrSxx RegrSxy RegrSyy Grouping GroupingId
JSONArrayAgg JSONObjectAgg JSONBObjectAgg
RowNumber Rank DenseRank PercentRank CumeDist Ntile Lag Lead FirstValue LastValue NthValue
Abs Acos Acosh Asin Asinh Atan Atan2 Atanh Cbrt Ceil Cos Cosh Cot Degrees Exp Factorial Floor Ln Log Pi Pow
Radians Round Sign Sin Sinh Sqrt Tan Tanh Trunc Rand IsNan IsInf WidthBucket SafeDivide Greatest Least
Ascii Chr Concat ConcatWs Contains EndsWith StartsWith Initcap Left Right Length BitLength ByteLength Lower
Upper Trim Pad Repeat Replace Reverse Translate Substring SubstringIndex SplitPart Split StrPosition
RegexpLike RegexpILike RegexpReplace RegexpExtract RegexpExtractAll RegexpSplit RegexpCount RegexpSubstr
RegexpInstr RegexpFullMatch Levenshtein JarowinklerSimilarity Soundex MD5 SHA SHA2 Hex Unhex LowerHex
Unicode Format Overlay ToBase64 FromBase64 StringToArray ArrayToString ToChar NumberToStr ToNumber Normalize
CurrentDate CurrentTime CurrentTimestamp CurrentDatetime Localtime Localtimestamp Date DateAdd DateSub
DateDiff DateTrunc DatetimeAdd DatetimeSub DatetimeDiff DatetimeTrunc TimestampAdd TimestampSub TimestampDiff
TimestampTrunc TimeAdd TimeSub TimeDiff TimeTrunc Extract Day DayOfMonth DayOfWeek DayOfWeekIso DayOfYear
Dayname Month Monthname Quarter Week WeekOfYear Year YearOfWeek YearOfWeekIso Hour Minute Second LastDay
AddMonths MonthsBetween StrToDate StrToTime StrToUnix TimeToStr TimeToUnix TimeStrToDate TimeStrToTime
TimeStrToUnix UnixToStr UnixToTime UnixToTimeStr UnixSeconds UnixMillis UnixMicros UnixDate DateStrToDate
DateToDateStr DiToDate DateToDi TsOrDsAdd TsOrDsDiff TsOrDsToDate TsOrDsToDateStr TsOrDsToDatetime
TsOrDsToTime TsOrDsToTimestamp TsOrDiToDi DateFromParts TimeFromParts TimestampFromParts MakeInterval
JustifyDays JustifyHours JustifyInterval Time Timestamp Datetime DateBin NextDay PreviousDay
Case If Coalesce Nullif Nvl2 Exists EqualNull And Or Xor Cast TryCast Collate
JSONExtract JSONExtractScalar JSONBExtract JSONBExtractScalar JSONArray JSONObject JSONType JSONFormat
ParseJSON JSONBContains JSONArrayContains JSONKeys
Array ArrayContains ArrayContainsAll ArrayOverlaps ArraySize ArraySlice ArrayPosition ArrayConcat
ArrayDistinct ArrayFilter ArrayFirst ArrayLast ArrayMax ArrayMin ArraySum ArraySort ArrayReverse ArrayAppend
ArrayPrepend ArrayRemove ArrayIntersect Unnest Struct StructExtract List Map Typeof Columns
"""
ALLOWED_CLASSES: frozenset[type[exp.Expr]] = frozenset(getattr(exp, n) for n in _CLASS_NAMES.split())

# Functions sqlglot does not type (``exp.Anonymous``), by the name the model wrote, per dialect.
_COMMON = """
abs ceil ceiling floor round trunc sign sqrt cbrt exp ln log log10 log2 power pow mod div pi degrees radians
sin cos tan asin acos atan atan2 random gcd lcm concat concat_ws lower upper length char_length
character_length octet_length bit_length substr substring replace trim ltrim rtrim btrim lpad rpad left right
reverse repeat strpos instr position ascii chr nullif coalesce greatest least ifnull md5 sha256 format printf
count sum avg min max stddev stddev_pop stddev_samp var_pop var_samp variance median mode string_agg
group_concat bool_and bool_or every row_number rank dense_rank percent_rank cume_dist ntile lag lead
first_value last_value nth_value date_part date_trunc date_diff datediff date_add date_sub to_timestamp
to_date to_char age make_date make_time make_timestamp now today current_date isfinite isnan isinf
regexp_replace regexp_matches regexp_match regexp_extract regexp_split_to_array split_part string_to_array
array_to_string array_length cardinality array_position array_append array_prepend array_cat array_remove
array_agg unnest width_bucket json_extract json_array_length json_object json_array json_valid json_type
to_json typeof
"""
_PER_DIALECT = {
    "postgres": """
    initcap translate quote_literal quote_ident to_number date_bin justify_days justify_hours justify_interval
    clock_timestamp statement_timestamp transaction_timestamp timezone num_nulls num_nonnulls scale
    min_scale trim_scale factorial corr covar_pop covar_samp regr_slope regr_intercept regr_r2 regr_count
    percentile_cont percentile_disc regexp_split_to_table regexp_count regexp_substr regexp_instr regexp_like
    json_build_object jsonb_build_object json_build_array jsonb_build_array json_agg jsonb_agg
    json_object_agg jsonb_object_agg jsonb_array_length jsonb_typeof json_typeof json_extract_path
    json_extract_path_text jsonb_extract_path jsonb_extract_path_text to_jsonb row_to_json
    jsonb_array_elements_text json_array_elements_text jsonb_array_elements json_array_elements
    jsonb_object_keys json_object_keys jsonb_strip_nulls jsonb_pretty array_dims array_lower array_upper
    array_ndims array_replace string_to_table encode decode sha224 sha384 sha512 gen_random_uuid pg_typeof
    to_hex bit_count date_add date_subtract extract make_interval
    """,
    "duckdb": """
    list_value list_aggregate list_sort list_reverse_sort list_distinct list_unique list_contains list_has
    list_position list_extract list_element list_slice list_concat list_filter list_transform list_reduce
    list_sum list_min list_max list_avg len array_contains array_has array_slice array_sort array_distinct
    string_split str_split string_split_regex regexp_full_match regexp_extract_all strftime strptime
    try_strptime epoch epoch_ms epoch_us make_timestamptz time_bucket datetrunc datepart dayname monthname
    last_day week weekday weekofyear yearweek isodow isoyear dayofweek dayofmonth dayofyear year month day
    hour minute second millisecond microsecond quarter era century decade struct_pack struct_extract
    map_keys map_values map_extract element_at prefix suffix starts_with ends_with contains strip_accents
    bar even round_even factorial arg_max arg_min max_by min_by first last any_value fsum favg product
    entropy kurtosis skewness histogram quantile quantile_cont quantile_disc approx_count_distinct
    approx_quantile count_star list array hash hamming levenshtein damerau_levenshtein jaccard jaro_similarity
    jaro_winkler_similarity mismatches json_extract_string json_keys json_structure to_base64 from_base64 hex
    unhex bin format_bytes ilike_escape like_escape nextafter signbit gamma lgamma ascii unicode ord
    """,
    "sqlite": """
    total julianday unixepoch datetime date time strftime timediff iif char likelihood likely unlikely quote
    soundex hex unhex unicode json json_extract json_quote json_group_array json_group_object
    json_insert json_replace json_set json_remove json_patch
    """,
}
ALLOWED_NAMES: dict[str, frozenset[str]] = {
    dialect: frozenset(_COMMON.split()) | frozenset(extra.split()) for dialect, extra in _PER_DIALECT.items()}

# Types a value may be cast to: data, not catalog lookups (``regclass``, ``regproc`` resolve names
# in the catalog) or types an extension defines.
_T = exp.DType
_CAST_TYPES = """
BIGINT INT SMALLINT TINYINT UBIGINT UINT USMALLINT UTINYINT INT128 BIGDECIMAL DECIMAL BPCHAR DATERANGE INT4RANGE
INT8RANGE NUMRANGE TSRANGE TSTZRANGE DOUBLE FLOAT MONEY BOOLEAN TEXT VARCHAR CHAR NCHAR NVARCHAR NAME BINARY
VARBINARY BLOB DATE TIME TIMETZ TIMESTAMP TIMESTAMPTZ TIMESTAMPLTZ TIMESTAMP_S TIMESTAMP_MS TIMESTAMP_NS DATETIME
TIMESTAMPNTZ INTERVAL JSON JSONB UUID ARRAY LIST STRUCT MAP INET BIT SERIAL BIGSERIAL SMALLSERIAL DATE32
"""
ALLOWED_CAST_TYPES: frozenset[exp.DType] = frozenset(getattr(_T, name) for name in _CAST_TYPES.split())

# What SQLite's authorizer lets a query call (its own names, lower case): core scalar, aggregate,
# window, date/time, math and JSON functions. Not load_extension, readfile/writefile, fts3_tokenizer,
# sqlite_* introspection, zeroblob/randomblob (memory), changes()/last_insert_rowid().
_SQLITE_FUNCTIONS = """
abs char coalesce concat concat_ws format glob hex ifnull iif instr length like likelihood likely lower ltrim
max min nullif octet_length printf quote random replace round rtrim sign soundex substr substring trim typeof
unhex unicode unlikely upper avg count group_concat string_agg sum total row_number rank dense_rank
percent_rank cume_dist ntile lag lead first_value last_value nth_value date time datetime julianday unixepoch
strftime timediff acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log log10
log2 mod pi pow power radians sin sinh sqrt tan tanh trunc json json_array json_array_length json_extract
json_insert json_object json_patch json_remove json_replace json_set json_type json_valid json_quote
json_group_array json_group_object -> ->> regexp
"""
SQLITE_FUNCTIONS: frozenset[str] = frozenset(_SQLITE_FUNCTIONS.split())
